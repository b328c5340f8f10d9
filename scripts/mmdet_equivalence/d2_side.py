"""
Detectron2 side of the equivalence check; runs in the project's environment.

    .venv/bin/python scripts/mmdet_equivalence/d2_side.py WORKDIR [--cases a,b]

For every case: loads WORKDIR/CASE/d2.pth (made by scripts/convert_mmdet_checkpoint.py from
mmdet.pth) exactly into the model of the case's config, runs the images mmdet_side.py ran, and
compares stage by stage with mmdet_out.pt: preprocessed input, ResNet stages, FPN levels, RPN
head outputs and proposals, box head outputs on mmdet's RoIs, final detections, mask head on
mmdet's RoIs and final masks, semantic logits and the panoptic segmentation. Writes
WORKDIR/CASE/compare.json and WORKDIR/resize.json.
"""
import argparse
import json
import os
import sys

import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, REPO]
from cases import CASES  # noqa: E402
from dysample_d2 import model_zoo  # noqa: E402
from tools.engine import load_exact_checkpoint, setup_config  # noqa: E402

NUM_THINGS, NUM_STUFF = 80, 53


def diff(a, b):
    """max |a - b|, and that relative to max |b| (b: the mmdet reference)."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        return {"shape_mismatch": [list(a.shape), list(b.shape)]}
    max_abs = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale else max_abs}


def worst(entries):
    """Merge diff() results: the largest max_abs and max_rel."""
    out = {"max_abs": 0.0, "max_rel": 0.0}
    for e in entries:
        if "shape_mismatch" in e:
            return e
        out = {k: max(out[k], e[k]) for k in out}
    return out


def run_d2(model, image):
    rec = {}
    hooks = [
        model.backbone.register_forward_pre_hook(lambda m, i: rec.update(input=i[0].clone())),
        model.backbone.bottom_up.register_forward_hook(lambda m, i, o: rec.update(backbone=o)),
        model.backbone.register_forward_hook(lambda m, i, o: rec.update(fpn=o)),
        model.proposal_generator.rpn_head.register_forward_hook(
            lambda m, i, o: rec.update(rpn_logits=o[0], rpn_deltas=o[1])),
        model.proposal_generator.register_forward_hook(
            lambda m, i, o: rec.update(proposals=o[0][0])),
    ]
    if hasattr(model, "sem_seg_head"):
        hooks.append(model.sem_seg_head.predictor.register_forward_hook(
            lambda m, i, o: rec.update(sem_logits=o)))
    h0, w0 = image["original"].shape[:2]
    inputs = [{"image": image["resized"].permute(2, 0, 1).float(), "height": h0, "width": w0}]
    try:
        with torch.no_grad():
            rec["output"] = model(inputs)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return rec


def roi_heads_on(model, features, rois, kind):
    heads = model.roi_heads
    feats = [features[f] for f in heads.in_features]
    boxes = [Boxes(rois[:, 1:])]
    with torch.no_grad():
        if kind == "box":
            return heads.box_predictor(heads.box_head(heads.box_pooler(feats, boxes)))
        return heads.mask_head.layers(heads.mask_pooler(feats, boxes))


def match_detections(ref, d2_inst):
    """Greedy: each mmdet detection (by score) to the unused D2 one of its class with max IoU."""
    boxes, scores, labels = d2_inst.pred_boxes.tensor, d2_inst.scores, d2_inst.pred_classes
    iou = pairwise_iou(Boxes(ref["boxes"]), Boxes(boxes)) if len(boxes) and len(ref["boxes"]) \
        else torch.zeros(len(ref["boxes"]), len(boxes))
    used, pairs = set(), []
    for i in torch.argsort(-ref["scores"]).tolist():
        cand = [(iou[i, j].item(), j) for j in range(len(boxes))
                if j not in used and labels[j] == ref["labels"][i]]
        if cand:
            best, j = max(cand)
            if best > 0.99:
                used.add(j)
                pairs.append((i, j))
    out = {"mmdet": len(ref["boxes"]), "d2": len(boxes), "matched": len(pairs)}
    if pairs:
        i, j = (torch.tensor(x) for x in zip(*pairs))
        out["box"] = diff(boxes[j], ref["boxes"][i])
        out["score"] = diff(scores[j], ref["scores"][i])
        if "masks" in ref:
            a, b = d2_inst.pred_masks[j], ref["masks"][i]
            differ = (a != b).flatten(1).sum(1).float()
            union = (a | b).flatten(1).sum(1).clamp(min=1).float()
            out["mask_pixels_differing"] = int(differ.sum().item())
            out["mask_pixels_total"] = int(b.sum().item())
            out["mask_min_iou"] = float((1 - differ / union).min().item())
    return out


def panoptic_categories(panoptic_seg, segments):
    """D2 panoptic output -> mmdet's per-pixel category (things 0..79, stuff 80..132, void 133)."""
    cat = torch.full_like(panoptic_seg, NUM_THINGS + NUM_STUFF, dtype=torch.long)
    for seg in segments:
        c = seg["category_id"] if seg["isthing"] else NUM_THINGS + seg["category_id"] - 1
        cat[panoptic_seg == seg["id"]] = c
    return cat


def compare_panoptic(ref_pan, d2_out):
    pan, segments = d2_out["panoptic_seg"]
    d2_cat = panoptic_categories(pan, segments)
    ref_cat = (ref_pan % 1000).long()
    agree = (d2_cat == ref_cat).float().mean().item()
    # instance partition: the IoU of each mmdet thing segment with its best D2 segment
    ious = []
    for sid in torch.unique(ref_pan).tolist():
        if sid < 1000:
            continue
        mask = ref_pan == sid
        ids, counts = torch.unique(pan[mask], return_counts=True)
        best = ids[counts.argmax()]
        inter = counts.max().item()
        ious.append(inter / (mask.sum().item() + (pan == best).sum().item() - inter))
    n_ref_things = sum(1 for s in torch.unique(ref_pan).tolist() if s >= 1000)
    return {"pixel_category_agreement": agree, "mmdet_thing_segments": n_ref_things,
            "d2_thing_segments": sum(1 for s in segments if s["isthing"]),
            "min_thing_segment_iou": min(ious) if ious else 1.0}


def compare_case(name, workdir, images):
    case = CASES[name]
    cfg = setup_config(model_zoo.get_config_file(case["config"]), case.get("opts", []))
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    load_exact_checkpoint(model, os.path.join(workdir, name, "d2.pth"))
    ref_all = torch.load(os.path.join(workdir, name, "mmdet_out.pt"), weights_only=False)
    per_image = []
    for index, ref in enumerate(ref_all["results"]):
        rec = run_d2(model, images[index])
        res = {"size": list(images[index]["resized"].shape[:2])}
        res["input"] = diff(rec["input"], ref["input"])
        res["backbone"] = worst(diff(rec["backbone"][f"res{k + 2}"], t)
                                for k, t in enumerate(ref["backbone"]))
        levels = ["p2", "p3", "p4", "p5", "p6"]
        res["fpn_per_level"] = {lv: diff(rec["fpn"][lv], t) for lv, t in zip(levels, ref["fpn"])}
        res["fpn"] = worst(res["fpn_per_level"].values())
        pairs = list(zip(rec["rpn_logits"], ref["rpn_logits"]))
        pairs += list(zip(rec["rpn_deltas"], ref["rpn_deltas"]))
        res["rpn_head"] = worst(diff(a, b) for a, b in pairs)
        props = rec["proposals"]
        k = min(len(props), len(ref["proposals"]))
        same = torch.diag(pairwise_iou(props.proposal_boxes[:k], Boxes(ref["proposals"][:k])))
        anywhere = pairwise_iou(props.proposal_boxes, Boxes(ref["proposals"])).max(1).values
        res["proposals"] = {"mmdet": len(ref["proposals"]), "d2": len(props),
                            "same_rank_iou_below_0.999": int((same < 0.999).sum().item()),
                            "not_in_mmdet_set": int((anywhere < 0.999).sum().item()),
                            "box": diff(props.proposal_boxes.tensor[:k], ref["proposals"][:k]),
                            "score": diff(props.objectness_logits[:k].sigmoid(),
                                          ref["proposal_scores"][:k])}
        logits, deltas = roi_heads_on(model, rec["fpn"], ref["box_rois"], "box")
        res["box_head_on_mmdet_rois"] = worst([diff(logits, ref["box_logits"]),
                                               diff(deltas, ref["box_deltas"])])
        inst = rec["output"]["instances"]
        res["detections"] = match_detections(ref, inst)
        if "mask_logits" in ref:
            res["mask_head_on_mmdet_rois"] = diff(
                roi_heads_on(model, rec["fpn"], ref["mask_rois"], "mask"), ref["mask_logits"])
        if "sem_logits" in ref:
            order = torch.cat([torch.tensor([NUM_STUFF]), torch.arange(NUM_STUFF)])
            res["semantic_logits"] = diff(rec["sem_logits"], ref["sem_logits"][:, order])
            res["panoptic"] = compare_panoptic(ref["panoptic"], rec["output"])
            if "class_agnostic" in ref_all:
                res["panoptic_vs_mmdet_class_agnostic_nms"] = compare_panoptic(
                    ref_all["class_agnostic"][index]["panoptic"], rec["output"])
        per_image.append(res)
        print(f"[d2] {name} {res['size']}: fpn rel {res['fpn']['max_rel']:.2e}, "
              f"detections {res['detections']['matched']}/{res['detections']['mmdet']} matched",
              flush=True)
    with open(os.path.join(workdir, name, "compare.json"), "w") as f:
        json.dump(per_image, f, indent=1)
    return per_image


def compare_resize(images):
    """Detectron2's test-time resize (PIL) vs mmdet's (cv2) on the same uint8 images."""
    out = []
    aug = T.ResizeShortestEdge(800, 1333)
    for image in images:
        original = image["original"].numpy()
        d2 = torch.from_numpy(aug.get_transform(original).apply_image(original))
        ref = image["resized"]
        entry = {"original": list(original.shape[:2]), "mmdet": list(ref.shape[:2]),
                 "d2": list(d2.shape[:2])}
        if d2.shape == ref.shape:
            delta = (d2.int() - ref.int()).abs()
            entry.update(max_abs=int(delta.max()), mean_abs=float(delta.float().mean()),
                         fraction_differing=float((delta > 0).float().mean()))
        out.append(entry)
    return out


def compare_classes(workdir):
    """mmdet's COCO class lists vs Detectron2's metadata (detection and panoptic_separated)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, _get_builtin_metadata

    with open(os.path.join(workdir, "classes.json")) as f:
        mm = json.load(f)
    things = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    stuff = [c["name"] for c in COCO_CATEGORIES if not c["isthing"]]
    separated = _get_builtin_metadata("coco_panoptic_separated")
    contiguous = sorted(separated["stuff_dataset_id_to_contiguous_id"].items())
    stuff_ids = sorted(c["id"] for c in COCO_CATEGORIES if not c["isthing"])
    return {
        "things_equal": things == mm["coco"] == mm["panoptic_things"],
        "stuff_equal": stuff == mm["panoptic_stuff"],
        # Detectron2 semantic class k >= 1 is the k-th stuff category by id, 0 the things
        "d2_semantic_layout":
            contiguous == [(0, 0)] + [(i, k + 1) for k, i in enumerate(stuff_ids)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    images = torch.load(os.path.join(args.workdir, "images.pt"), weights_only=False)
    with open(os.path.join(args.workdir, "resize.json"), "w") as f:
        json.dump({"resize": compare_resize(images), "classes": compare_classes(args.workdir)},
                  f, indent=1)
    for name in args.cases.split(","):
        compare_case(name, args.workdir, images)


if __name__ == "__main__":
    main()
