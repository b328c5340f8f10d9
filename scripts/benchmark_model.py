#!/usr/bin/env python
"""
Whole-model benchmark of the configs in configs/: Faster R-CNN, Mask R-CNN and Panoptic FPN
(R50) with the nearest-neighbour FPN, DySample and DySample+, random weights.

Per model: parameters, inference GFLOPs (detectron2's fvcore FlopCountAnalysis, one image),
inference latency per image at --size, one training iteration (batch 2, synthetic targets:
forward + backward, no optimizer step) latency and peak memory, ratios to nearest. "backbone"
is ResNet-50 + FPN alone (forward of one image; training: forward + backward of batch 2 with
the mean of every output level as loss). The three upsamplers of an architecture are
interleaved and rotated every repeat. Writes DIR/results.md and DIR/results.json.

DySample's offsets, and with them where its sampling reads, scale with the features: random
FrozenBN weights let ResNet-50's activations grow to about 1e3 and the offsets to about 10 px;
--calibrate-bn normalizes the activations (offsets near 0, DySample at its initialization). A
trained model lies in between; the table reports the offsets measured.

    python scripts/benchmark_model.py --out benchmark_results/model           # 800x1333
    python scripts/benchmark_model.py --quick --out output/model              # smoke run
    python scripts/benchmark_model.py --archs backbone --calibrate-bn --out output/model_bn
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from bench_common import (  # noqa: E402
    count_flops,
    header_lines,
    peak_memory_mb,
    start_info,
    synchronize,
    write_results,
)
from bench_common import upsampling_ms  # noqa: E402

CONFIGS = {
    # ResNet-50 + FPN alone (the configs' `model.backbone`): the only part whose work differs
    # between the upsamplers; the heads' work also depends on what random weights propose
    "backbone": ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
                 "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
                 "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml"),
    "faster_rcnn": ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
                    "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
                    "COCO-Detection/faster_rcnn_R_50_DySamplePlus_FPN_1x.yaml"),
    "mask_rcnn": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                  "COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml",
                  "COCO-InstanceSegmentation/mask_rcnn_R_50_DySamplePlus_FPN_1x.yaml"),
    "panoptic_fpn": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
                     "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml",
                     "COCO-PanopticSegmentation/panoptic_fpn_R_50_DySamplePlus_1x.yaml"),
}
UPSAMPLERS = ("nearest", "DySample", "DySample+")


def build(config, device, norm, quick=False):
    from detectron2.modeling import build_model

    from dysample_d2.model_zoo import get_config

    opts = [
        "MODEL.WEIGHTS", "",  # random weights
        "MODEL.DEVICE", device,
        # random weights score every box about alike: with threshold 0 every model keeps its
        # TEST.DETECTIONS_PER_IMAGE (100) boxes, so the mask head always runs on 100 of them
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    ]
    if norm:  # random-init FrozenBN can NaN over many iterations; one step is fine
        opts += ["MODEL.RESNETS.NORM", norm, "MODEL.FPN.NORM", norm]
    if quick:  # smoke run: light proposal and ROI settings
        opts += ["MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"]
    cfg = get_config(config, opts)
    return build_model(cfg), cfg


def synthetic_batch(cfg, batch_size, height, width, device, seed=0):
    """Images with random boxes, classes, masks and (for Panoptic FPN) a semantic map."""
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        xy = torch.rand(8, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
        wh = (0.1 + 0.2 * torch.rand(8, 2, generator=gen)) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(8, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(boxes)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        instances.gt_classes = torch.randint(0, num_classes, (8,), generator=gen)
        instances.gt_masks = BitMasks(masks)
        num_sem = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        batch.append({
            "image": (torch.rand(3, height, width, generator=gen) * 255).to(device),
            "instances": instances.to(device),
            "sem_seg": torch.randint(0, num_sem, (height, width), generator=gen).to(device),
            "height": height, "width": width,
        })
    return batch


def model_flops(model, image, backbone_only=False):
    from detectron2.utils.analysis import FlopCountAnalysis

    model.eval()
    if backbone_only:  # a tensor input; elementwise ops counted too (bench_common)
        return count_flops(model.backbone, (normalized(model, [image]),))
    analysis = FlopCountAnalysis(model, [{"image": image}])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis.total(), sorted(analysis.unsupported_ops())


def calibrate_frozen_bn(model, images):
    """
    Sets every FrozenBatchNorm2d's statistics to those of its input on `images`, layer after
    layer in one forward pass, so that activations have the scale of a trained network's (the
    identity statistics of random weights let them grow to about 1e3 through ResNet-50).
    """
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module, inputs):
        module.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        module.running_var.copy_(inputs[0].var((0, 2, 3)))

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if not layers:
        raise ValueError("--calibrate-bn: the model has no FrozenBatchNorm2d layer")
    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    try:
        with torch.no_grad():
            model.backbone(normalized(model, images))
    finally:
        for handle in handles:
            handle.remove()


def dysample_offsets_px(model, image):
    """Mean and max |offset| (input pixels) of the FPN's DySample modules on one image."""
    from dysample_d2 import DySample

    found = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(m.offsets(i[0]).abs()))
             for m in model.backbone.modules() if isinstance(m, DySample)]
    try:
        with torch.no_grad():
            model.backbone(normalized(model, [image]))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        return None
    return (sum(f.sum().item() for f in found) / sum(f.numel() for f in found),
            max(f.max().item() for f in found))


def normalized(model, images):
    """The padded, normalized batch tensor the backbone of `model` sees."""
    from detectron2.structures import ImageList

    images = [(im - model.pixel_mean) / model.pixel_std for im in images]
    return ImageList.from_tensors(images, model.backbone.size_divisibility).tensor


def measure_arch(arch, args, device):
    height, width = args.size
    models = [build(config, device, args.norm, args.quick) for config in CONFIGS[arch]]
    batch = synthetic_batch(models[0][1], 2, height, width, device)
    if args.calibrate_bn:  # the backbone is the same in all three: calibrated once, shared
        calibrate_frozen_bn(models[0][0], [batch[0]["image"]])
    # same random weights everywhere but in the upsamplers: same backbone, heads, proposals
    shared = models[0][0].state_dict()
    for model, _ in models[1:]:
        model.load_state_dict(shared, strict=False)
    rows = []
    for name, (model, _) in zip(UPSAMPLERS, models):
        row = dict(arch=arch, upsampler=name, device=device,
                   params=sum(p.numel() for p in (model.backbone if arch == "backbone"
                                                  else model).parameters()),
                   infer=[], train=[])
        row["offset_px"] = dysample_offsets_px(model, batch[0]["image"])
        if args.flops:
            row["flops"], row["flops_skipped"] = model_flops(model, batch[0]["image"],
                                                             backbone_only=arch == "backbone")
        rows.append(row)
        print(f"  [{device}] {arch} {name}: {row['params'] / 1e6:.2f} M params"
              + (f", {row['flops'] / 1e9:.1f} GFLOPs" if args.flops else ""), flush=True)

    def infer(model):
        model.eval()
        with torch.no_grad():
            if arch == "backbone":
                model.backbone(normalized(model, [batch[0]["image"]]))
            else:
                model([{"image": batch[0]["image"], "height": height, "width": width}])

    def train(model):
        from detectron2.utils.events import EventStorage

        model.train()
        for p in model.parameters():
            p.grad = None
        if arch == "backbone":
            features = model.backbone(normalized(model, [x["image"] for x in batch]))
            sum(f.mean() for f in features.values()).backward()
            return
        with EventStorage(0):  # the heads log training statistics there
            losses = model(batch)
        sum(losses.values()).backward()

    def timed(fn):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    for (model, _) in models:
        for _ in range(args.warmup):
            infer(model)
            train(model)
    for row, (model, _) in zip(rows, models):
        for p in model.parameters():  # the step's own gradients count, not the last step's
            p.grad = None
        row["train_peak_mb"] = peak_memory_mb(lambda: train(model), device)
    for r in range(args.repeats):
        for i in [(r + k) % len(models) for k in range(len(models))]:
            rows[i]["infer"].append(timed(lambda: infer(models[i][0])))
            rows[i]["train"].append(timed(lambda: train(models[i][0])))
    if device == "cpu":  # the upsamplers' own time inside the model, free of the convs' noise
        # (medians: single runs of page-fault-heavy ops vary 2x)
        for row, (model, _) in zip(rows, models):
            channels = model.backbone.output_shape()["p2"].channels
            row["infer_upsampling_ms"] = upsampling_ms(lambda: infer(model), 5, channels)
            row["train_upsampling_ms"] = upsampling_ms(lambda: train(model), 3, channels)
    for row in rows:
        row["infer_samples_ms"] = [round(1e3 * t, 2) for t in row.pop("infer")]
        row["train_samples_ms"] = [round(1e3 * t, 2) for t in row.pop("train")]
        row["infer_ms"] = statistics.median(row["infer_samples_ms"])
        row["train_ms"] = statistics.median(row["train_samples_ms"])
    base = rows[0]
    for row in rows:
        keys = ("params", "infer_ms", "train_ms", "train_peak_mb") + (("flops",) * args.flops)
        for key in keys:
            row[f"{key}_vs_nearest"] = row[key] / base[key] if base[key] else float("nan")
        for key in ("infer", "train"):  # what the upsampler adds, against the nearest model
            if f"{key}_upsampling_ms" in row:
                extra = row[f"{key}_upsampling_ms"] - base[f"{key}_upsampling_ms"]
                row[f"{key}_upsampling_share"] = extra / base[f"{key}_ms"]
        print(f"  [{device}] {arch} {row['upsampler']:<9} inference {row['infer_ms']:9.1f} ms/img "
              f"({row['infer_ms_vs_nearest']:.3f}x nearest)  train {row['train_ms']:9.1f} ms/iter "
              f"({row['train_ms_vs_nearest']:.3f}x)  peak {row['train_peak_mb']:.0f} MB "
              f"({row['train_peak_mb_vs_nearest']:.3f}x)" + (
                  f"  upsampling {row['infer_upsampling_ms']:.1f} / {row['train_upsampling_ms']:.1f}"
                  " ms" if "infer_upsampling_ms" in row else ""), flush=True)
    return rows


def _spread(row, key):
    samples = row[f"{key}_samples_ms"]
    return f"{row[key + '_ms']:.1f} ({min(samples):.0f}-{max(samples):.0f})"


def _upsampling(row):
    if "infer_upsampling_ms" not in row:
        return "- | -"
    return (f"{row['infer_upsampling_ms']:.1f} / {row['train_upsampling_ms']:.1f} "
            f"| {100 * row['infer_upsampling_share']:+.2f} % / "
            f"{100 * row['train_upsampling_share']:+.2f} %")


def _offsets(row):
    if row["offset_px"] is None:
        return "-"
    return f"{row['offset_px'][0]:.3g} / {row['offset_px'][1]:.3g}"


def write_markdown(path, rows, info, args):
    h, w = args.size
    lines = header_lines("Model benchmark", info) + [
        f"Random weights{', norm ' + args.norm if args.norm else ''}"
        + (", FrozenBN statistics calibrated on one image (--calibrate-bn)"
           if args.calibrate_bn else "")
        + f"; inference: one {h}x{w} "
        f"image (latency per image); training: one iteration of batch 2 {h}x{w} with synthetic "
        "targets, forward + backward (no optimizer step), peak = memory allocated during it "
        f"(torch.profiler on CPU, max_memory_allocated on CUDA); median of {args.repeats} "
        f"interleaved repeats after {args.warmup} warm-up. GFLOPs: detectron2's "
        "FlopCountAnalysis of inference on one image. ROI_HEADS.SCORE_THRESH_TEST is 0 so that "
        "every model keeps 100 detections (with random weights the number above the usual 0.05 "
        "would be arbitrary) and the mask head runs on all of them. \"backbone\": ResNet-50 + "
        "FPN alone, the part whose work the upsampler changes (inference: one image; training: "
        "forward + backward of batch 2, loss = mean of each output level). Latencies: median "
        "(min-max) of the repeats. Upsampling (CPU): torch.profiler's CPU time of the FPN's "
        "top-down steps, median of 5 more inferences and of 3 more training iterations, each "
        "profiled on its own (nearest: upsample_nearest2d, its backward and the sum with the "
        "lateral features; DySample: its autograd Function and backward, matmuls, grid and "
        "the sum, done in place, included); added: that time minus the nearest model's, as a share "
        "of the nearest model's median latency. Offsets: mean / max |offset| in input pixels "
        "of the FPN's DySample modules on one image (what the sampling reads depends on "
        "them).", "",
        "| device | model | FPN upsampler | params (M) | GFLOPs | inference ms/img "
        "| train ms/iter | train peak MB | params / nearest | GFLOPs / nearest "
        "| inference / nearest | train / nearest | peak / nearest "
        "| upsampling ms: inference / train | upsampling added: inference / train "
        "| offsets px: mean / max |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flops = f"{r['flops'] / 1e9:.1f}" if "flops" in r else "-"
        flops_ratio = f"{r['flops_vs_nearest']:.4f}" if "flops" in r else "-"
        lines.append(
            f"| {r['device']} | {r['arch']} | {r['upsampler']} | {r['params'] / 1e6:.3f} "
            f"| {flops} | {_spread(r, 'infer')} | {_spread(r, 'train')} | {r['train_peak_mb']:.0f} "
            f"| {r['params_vs_nearest']:.4f} | {flops_ratio} | {r['infer_ms_vs_nearest']:.3f} "
            f"| {r['train_ms_vs_nearest']:.3f} | {r['train_peak_mb_vs_nearest']:.3f} "
            f"| {_upsampling(r)} | {_offsets(r)} |"
        )
    skipped = sorted({op for r in rows for op in r.get("flops_skipped", [])})
    if args.flops:
        lines += ["", f"Ops fvcore did not count: {', '.join(skipped) or 'none'}."]
    Path(path).write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default=None, help="HxW of the images (default 800x1333)")
    p.add_argument("--archs", default=",".join(CONFIGS), help="comma-separated subset of "
                   + ", ".join(CONFIGS))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU, and CUDA too when available")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--norm", default="", help='e.g. "GN" for RESNETS.NORM and FPN.NORM')
    p.add_argument("--calibrate-bn", action="store_true",
                   help="set the FrozenBN statistics from one image first: unit-scale "
                   "activations, so DySample's offsets are those of its initialization (about "
                   "0.01 px) instead of random weights' (about 10 px)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    p.add_argument("--out", default="benchmark_results/model", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64x96 images, light RPN/ROI settings, 1 repeat, no warm-up")
    args = p.parse_args(argv)
    size = args.size or ("64x96" if args.quick else "800x1333")
    args.size = tuple(int(v) for v in size.lower().split("x"))
    args.repeats = args.repeats or (1 if args.quick else 5)
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    if args.calibrate_bn and args.norm:
        p.error(f"--calibrate-bn calibrates FrozenBN statistics; --norm {args.norm} has none")
    args.archs = [a for a in args.archs.split(",") if a]
    unknown = set(args.archs) - set(CONFIGS)
    if unknown:
        p.error(f"--archs: unknown {sorted(unknown)}; choose from {list(CONFIGS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "auto":
        if args.device == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: CUDA is not available")
        devices = [args.device]
    info = start_info(devices[-1], args.threads, __file__, args.quick)
    rows = []
    for device in devices:
        for arch in args.archs:
            rows += measure_arch(arch, args, device)
    out = write_results(args.out, info, rows, write_markdown, args)
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
