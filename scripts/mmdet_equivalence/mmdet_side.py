"""
mmdet side of the equivalence check; runs in the separate mmdet 3.3 environment
(`setup_env.py`), never in the project's.

    .venv-mmdet/bin/python scripts/mmdet_equivalence/mmdet_side.py WORKDIR [--cases a,b] \
        [--fixture tests/fixtures/mmdet_keys_rcnn.json]

For every case of cases.py: builds the mmdet model (mmdet's FPN, the authors' FPN_UPSAMPLE neck for
DySample, or mmdet's FPN_CARAFE with the authors' DySample),
gives it random weights that make every stage matter (random BatchNorm statistics, DySample
offsets of about a pixel, peaked classifier scores), saves WORKDIR/CASE/mmdet.pth, runs it on
the images and saves every stage (WORKDIR/CASE/mmdet_out.pt) for d2_side.py to compare.
"""
import argparse
import importlib
import json
import os
import sys

import mmcv
import mmdet
import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authors_neck  # noqa: E402,F401  (registers FPN_UPSAMPLE)
from cases import CASES, IMAGES  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")


# FPN_CARAFE's upsample_cfg per case upsampler: mmdet's configs/carafe values for CARAFE, kernel 3
# for deconvolution and pixel shuffle (the DySample authors' build_upsampler.py); DySample goes
# in after the build (authors_neck.use_authors_dysample).
FPN_CARAFE_UPSAMPLERS = {
    "carafe": dict(type="carafe", up_kernel=5, up_group=1, encoder_kernel=3, encoder_dilation=1,
                   compressed_channels=64),
    "deconv": dict(type="deconv", upsample_kernel=3),
    "pixel_shuffle": dict(type="pixel_shuffle", upsample_kernel=3),
}


def carafe_on_cpu(features, masks, kernel_size, group_size, scale_factor):
    """
    mmcv's ``carafe`` op, whose kernels are CUDA (and MLU/NPU) only, as the formula of its naive
    CUDA kernel (``carafe_naive_cuda_kernel.cuh``): output (c, h, w) is the sum over the
    k x k taps (i, j) of ``masks[(g * k + i) * k + j, h, w] * features[c, h // s + i - r,
    w // s + j - r]`` (g the channel's group, r = (k - 1) // 2, zero outside), written out
    with an unfold of the input and a nearest repeat.
    """
    n, c, h, w = features.shape
    k, s, g = kernel_size, scale_factor, group_size
    taps = F.unfold(features, k, padding=(k - 1) // 2).view(n, g, c // g, k * k, h, w)
    taps = taps.repeat_interleave(s, dim=4).repeat_interleave(s, dim=5)
    return torch.einsum("ngctyx,ngtyx->ngcyx", taps,
                        masks.view(n, g, k * k, h * s, w * s)).reshape(n, c, h * s, w * s)


def build(case, seed, class_agnostic=None):
    cfg = Config.fromfile(os.path.join(CONFIGS, case["mmdet"]))
    model_cfg = cfg.model
    model_cfg.backbone.depth = case["depth"]
    model_cfg.backbone.init_cfg = None  # no download: random weights
    carafe_layout = case.get("neck") == "fpn_carafe"
    if carafe_layout:  # the authors' configs: mmdet's configs/carafe neck, Pad size_divisor=64
        model_cfg.neck = dict(type="FPN_CARAFE", in_channels=[256, 512, 1024, 2048],
                              out_channels=256, num_outs=5, start_level=0, end_level=-1,
                              norm_cfg=None, act_cfg=None, order=("conv", "norm", "act"),
                              upsample_cfg=FPN_CARAFE_UPSAMPLERS.get(case["upsampler"],
                                                                     dict(type="nearest")))
        model_cfg.data_preprocessor.pad_size_divisor = 64
    elif case["upsampler"] != "nearest":
        model_cfg.neck.type = "FPN_UPSAMPLE"
        model_cfg.neck.upsample_cfg = dict(type="dysample", guided=False, style="lp", groups=4,
                                           dyscope=case["upsampler"] == "dysample+",
                                           scope_bias=case.get("scope_bias", False))
    if class_agnostic is not None:
        model_cfg.test_cfg.rcnn.nms.class_agnostic = class_agnostic
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    if carafe_layout and case["upsampler"].startswith("dysample"):
        authors_neck.use_authors_dysample(model.neck, dyscope=case["upsampler"] == "dysample+",
                                          scope_bias=case.get("scope_bias", False))
    model.init_weights()
    return model.eval(), cfg


def randomize(model, seed):
    """BN statistics and affine parameters away from identity (FrozenBN conversion matters)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=gen) * 0.5 + 0.5
            module.bias.data = torch.randn(n, generator=gen) * 0.1
            module.running_mean.data = torch.randn(n, generator=gen) * 0.1
            module.running_var.data = torch.rand(n, generator=gen) * 1.5 + 0.5
            module.num_batches_tracked.fill_(1000)
        elif isinstance(module, torch.nn.GroupNorm):
            module.weight.data = torch.rand(module.num_channels, generator=gen) * 0.5 + 0.75
            module.bias.data = torch.randn(module.num_channels, generator=gen) * 0.1


def calibrate(model, batch, targets):
    """Scale (and shift) the modules' outputs to the target std (and mean) on this batch, in
    order (later modules see the calibrated earlier ones)."""
    for names, target, mean in targets:
        outputs = {name: [] for name in names}  # a head shared by the FPN levels: all calls
        hooks = []
        for name in names:
            module = model.get_submodule(name)
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: outputs[name].append(o.detach().float().flatten())))
        with torch.no_grad():
            model.test_step(batch)
        for hook in hooks:
            hook.remove()
        for name in names:
            module = model.get_submodule(name)
            values = torch.cat(outputs[name])
            std, observed_mean = values.std().item(), values.mean().item()
            factor = target / max(std, 1e-12)
            module.weight.data *= factor
            if getattr(module, "bias", None) is not None:
                module.bias.data *= factor
                if mean is not None:
                    module.bias.data += mean - observed_mean * factor
                if name.endswith((".offset", ".scope", "fc_cls")):  # .scope: biased only
                    module.bias.data += torch.randn_like(module.bias) * target * 0.5


def calibration_targets(model, case):
    """(modules, output std, output mean or None). RPN logits stay below ~10: mmdet ranks
    proposals by sigmoid(logit) in float32, whose resolution near 1 turns close logits above
    ~10 into equal scores (Detectron2 ranks by the logit): a difference only for such
    saturated objectness scores."""
    targets = []
    dysample = case["upsampler"].startswith("dysample")
    count = len(getattr(model.neck, "upsample_modules", [])) if dysample else 0
    ups = [f"neck.upsample_modules.{i}" for i in range(count)]
    for name in ups:  # offsets ~1 px (x 0.25 after the conv), scopes spanning the sigmoid
        targets.append(([f"{name}.offset"], 4.0, None))
        if case["upsampler"] == "dysample+":
            targets.append(([f"{name}.scope"], 2.0, None))
    if case["upsampler"] == "carafe":  # peaked reassembly kernels (softmax of the encoder)
        targets += [([f"neck.upsample_modules.{i}.content_encoder"], 2.0, None)
                    for i in range(len(model.neck.upsample_modules))]
    targets.append((["rpn_head.rpn_cls"], 1.5, -3.0))
    targets.append((["rpn_head.rpn_reg"], 0.3, 0.0))
    targets.append((["roi_head.bbox_head.fc_cls"], 4.0, None))
    targets.append((["roi_head.bbox_head.fc_reg"], 1.0, 0.0))
    if hasattr(model.roi_head, "mask_head"):
        if hasattr(model.roi_head.mask_head.upsample, "content_encoder"):  # a CARAFE mask head
            targets.append((["roi_head.mask_head.upsample.content_encoder"], 2.0, None))
        targets.append((["roi_head.mask_head.conv_logits"], 3.0, 0.0))
    if hasattr(model, "semantic_head"):
        targets.append((["semantic_head.conv_logits"], 3.0, None))
    return targets


def make_images(seed=0):
    """Smooth random colour fields with rectangles, uint8 RGB, and mmcv's test-time resize."""
    gen = np.random.default_rng(seed)
    out = []
    for spec in IMAGES:
        h, w = spec["original"]
        low = gen.integers(0, 256, size=(h // 40 + 2, w // 40 + 2, 3)).astype(np.uint8)
        img = mmcv.imresize(low, (w, h), interpolation="bicubic")
        for _ in range(6):
            y0, x0 = gen.integers(0, h - 20), gen.integers(0, w - 20)
            y1, x1 = y0 + gen.integers(10, h // 2), x0 + gen.integers(10, w // 2)
            img[y0:y1, x0:x1] = gen.integers(0, 256, size=3)
        resized, scale = mmcv.imrescale(img, (1333, 800), return_scale=True,
                                        interpolation="bilinear", backend="cv2")
        assert resized.shape[:2] == tuple(spec["resized"]), (resized.shape, spec)
        out.append(dict(original=torch.from_numpy(img.copy()), resized=torch.from_numpy(resized)))
    return out


def data_batch(image):
    """What mmdet's test pipeline (LoadImageFromFile -> Resize -> PackDetInputs) produces."""
    rgb = image["resized"].numpy()
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # mmcv loads BGR; the preprocessor flips it
    h0, w0 = image["original"].shape[:2]
    h, w = rgb.shape[:2]
    sample = DetDataSample(metainfo=dict(ori_shape=(h0, w0), img_shape=(h, w),
                                         scale_factor=(w / w0, h / h0)))
    return dict(inputs=[torch.from_numpy(bgr).permute(2, 0, 1).contiguous()],
                data_samples=[sample])


def run_with_stages(model, batch):
    rec = {}
    hooks = [
        model.backbone.register_forward_hook(
            lambda m, i, o: rec.update(input=i[0].clone(), backbone=[t.clone() for t in o])),
        model.neck.register_forward_hook(lambda m, i, o: rec.update(fpn=[t.clone() for t in o])),
        model.rpn_head.register_forward_hook(
            lambda m, i, o: rec.update(rpn_logits=[t.clone() for t in o[0]],
                                       rpn_deltas=[t.clone() for t in o[1]])),
        model.roi_head.bbox_roi_extractor.register_forward_hook(
            lambda m, i, o: rec.update(box_rois=i[1].clone())),
        model.roi_head.bbox_head.register_forward_hook(
            lambda m, i, o: rec.update(box_logits=o[0].clone(), box_deltas=o[1].clone())),
    ]
    if hasattr(model.roi_head, "mask_head"):
        hooks += [
            model.roi_head.mask_roi_extractor.register_forward_hook(
                lambda m, i, o: rec.update(mask_rois=i[1].clone())),
            model.roi_head.mask_head.register_forward_hook(
                lambda m, i, o: rec.update(mask_logits=o.clone())),
        ]
    if hasattr(model, "semantic_head"):  # its predict() calls self.forward(): no hook fires
        semantic_forward = model.semantic_head.forward

        def recording_semantic_forward(*args, **kwargs):
            out = semantic_forward(*args, **kwargs)
            rec.update(sem_logits=out["seg_preds"].clone())
            return out

        model.semantic_head.forward = recording_semantic_forward
    rpn_predict, roi_predict = model.rpn_head.predict, model.roi_head.predict

    def recording_rpn_predict(*args, **kwargs):
        results = rpn_predict(*args, **kwargs)
        rec.update(proposals=results[0].bboxes.clone(), proposal_scores=results[0].scores.clone())
        return results

    def recording_roi_predict(*args, **kwargs):
        results = roi_predict(*args, **kwargs)  # rescaled to the original image
        inst = results[0]
        rec.update(boxes=inst.bboxes.clone(), scores=inst.scores.clone(),
                   labels=inst.labels.clone())
        if "masks" in inst:
            rec["masks"] = inst.masks.clone().bool()
        return results

    model.rpn_head.predict = recording_rpn_predict
    model.roi_head.predict = recording_roi_predict
    try:
        with torch.no_grad():
            out = model.test_step(batch)[0]
    finally:
        del model.rpn_head.predict, model.roi_head.predict
        if hasattr(model, "semantic_head"):
            del model.semantic_head.forward
        for hook in hooks:
            hook.remove()
    rec.update(final_outputs(out))
    return rec


def final_outputs(sample):
    """The panoptic segmentation (cls + instance * 1000; void = 133), when there is one."""
    if "pred_panoptic_seg" in sample:
        return {"panoptic": sample.pred_panoptic_seg.sem_seg[0].clone()}
    return {}


# The models whose key names and shapes tests/test_convert_mmdet.py replays.
FIXTURE_CASES = ("faster_r50_nearest", "faster_r50_dysample", "faster_r101_dysampleplus",
                 "mask_r50_dysampleplus", "panoptic_r50_dysampleplus")


def key_record(model):
    """Key -> shape; the constant DySample init_pos buffers also with their values."""
    state = model.state_dict()
    record = {"keys": {k: list(v.shape) for k, v in state.items()}}
    record["values"] = {k: v.flatten().tolist() for k, v in state.items() if k.endswith("init_pos")}
    return record


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--fixture", help="write the models' key names and shapes here (JSON)")
    args = parser.parse_args(argv)
    register_all_modules()
    # CARAFEPack.feature_reassemble reads the module's global; mmcv.ops re-exports the function
    # under the module's name, so the module is taken from sys.modules
    importlib.import_module("mmcv.ops.carafe").carafe = carafe_on_cpu
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    images = make_images()
    torch.save(images, os.path.join(args.workdir, "images.pt"))
    from mmdet.datasets import CocoDataset, CocoPanopticDataset

    with open(os.path.join(args.workdir, "classes.json"), "w") as f:
        json.dump({"coco": list(CocoDataset.METAINFO["classes"]),
                   "panoptic_things": list(CocoPanopticDataset.METAINFO["thing_classes"]),
                   "panoptic_stuff": list(CocoPanopticDataset.METAINFO["stuff_classes"])}, f)
    fixture = {}
    for index, name in enumerate(args.cases.split(",")):
        case = CASES[name]
        out_dir = os.path.join(args.workdir, name)
        os.makedirs(out_dir, exist_ok=True)
        # Detectron2's box NMS is per class: compare against mmdet doing the same (the
        # panoptic recipe's class-agnostic NMS is run below as a documented difference).
        model, cfg = build(case, seed=100 + index, class_agnostic=False)
        randomize(model, seed=200 + index)
        calibrate(model, data_batch(images[0]), calibration_targets(model, case))
        torch.save({"state_dict": model.state_dict(),
                    "meta": {"mmdet_version": mmdet.__version__, "mmcv_version": mmcv.__version__,
                             "cfg": cfg.pretty_text, "case": name}},
                   os.path.join(out_dir, "mmdet.pth"))
        if name in FIXTURE_CASES:
            fixture[name] = dict(config=case["config"], opts=case.get("opts", []),
                                 **key_record(model))
        results = []
        for image in images[: case.get("images", len(images))]:
            results.append(run_with_stages(model, data_batch(image)))
            print(f"[mmdet] {name}: {tuple(image['resized'].shape[:2])}: "
                  f"{len(results[-1]['boxes'])} detections", flush=True)
        extra = {}
        if case.get("class_agnostic_too"):
            agnostic, _ = build(case, seed=100 + index, class_agnostic=True)
            agnostic.load_state_dict(model.state_dict())
            with torch.no_grad():
                extra["class_agnostic"] = [
                    final_outputs(agnostic.test_step(data_batch(image))[0])
                    for image in images[: case.get("images", len(images))]]
        torch.save({"results": results, **extra}, os.path.join(out_dir, "mmdet_out.pt"))
    if args.fixture:
        record = {
            "source": ("recorded from mmdet's own models by scripts/verify_mmdet_equivalence.py "
                       f"(mmdet {mmdet.__version__}, mmcv {mmcv.__version__}, torch "
                       f"{torch.__version__}; DySample necks = the authors' FPN_UPSAMPLE module "
                       "names, scope conv without bias)"),
            "models": fixture,
        }
        with open(args.fixture, "w") as f:
            json.dump(record, f, separators=(",", ":"))
            f.write("\n")
        print(f"[mmdet] wrote {args.fixture}")


if __name__ == "__main__":
    main()
