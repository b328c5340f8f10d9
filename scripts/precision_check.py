#!/usr/bin/env python
"""
How far DySample-FPN and nearest-FPN exports drift from float32 eager at the precisions
deployments run at: OpenVINO f32 / bf16 / f16 (the CPU plugin's default on CPUs with bfloat16
units is bf16) and onnxruntime f32 / f16 (the model converted to float16).

    python scripts/precision_check.py --docs docs/deployment.md
    python scripts/precision_check.py --quick        # a smoke run: tiny random models

Both models (same config but the upsampler) are exported to ONNX (backbone, and the whole
model) once per sampler; every export is run in each runtime x precision, DySample's with its
sampling nodes kept in float32 (``tools/deploy/precision.py``) and, to show what that
does, without. Reported per cell: the backbone's relative feature drift (max |export - eager|
/ max |eager| over the levels the top-down upsampling produces, p2..p4), the detections'
differences (matched to eager's by class and IoU: how many are unmatched, the largest score
and box differences of the matched), and the backbone latency ratio DySample /
nearest at that precision (medians of --repeats at --size). --docs replaces the table
between the precision_check markers of that file.
"""
import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # tools/ and scripts/
from bench_common import header_lines, load_average, publish_table, start_info  # noqa: E402

from dysample_d2.export import BackboneExport, ExportError, tracing_adapter  # noqa: E402
from dysample_d2.export.onnx import output_names  # noqa: E402
from dysample_d2.layers import sampler  # noqa: E402
from tools.deploy import (  # noqa: E402
    compiled_precision,
    load_model,
    load_runtime,
    max_rel_diffs,
    write_onnx,
)

BEGIN, END = "<!-- precision_check: begin -->", "<!-- precision_check: end -->"
DYSAMPLE_CONFIG = "configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml"
# (runtime, precision)
CELLS = [("onnxruntime", "f32"), ("onnxruntime", "f16"), ("openvino", "f32"),
         ("openvino", "bf16"), ("openvino", "f16")]
# (label, sampler, opset)
EXPORTS = [("GridSample", "gridsample", 17), ("gather", "gather", 16)]


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--dysample-config", default=DYSAMPLE_CONFIG)
    parser.add_argument("--dysample-weights", default="output/quickstart/det/model_final.pth")
    parser.add_argument("--nearest-config", default=None,
                        help="default: the DySample config with build_resnet_fpn_backbone")
    parser.add_argument("--nearest-weights", default="output/precision/nearest/model_final.pth",
                        help="the nearest-FPN twin trained with the same config and schedule")
    parser.add_argument("--images", default="datasets/coco/val2017/*.jpg",
                        help="glob of the images the drift is measured on (first --num-images)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(768, 1344), metavar=("H", "W"),
                        help="backbone drift and latency size (images resized to it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: random tiny models, 2 noise images, 128x192, 1 repeat")
    parser.add_argument("--docs", metavar="FILE", help="write the table into FILE's markers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options for both models, KEY VALUE pairs")
    return parser


def load_images(cfg, args):
    """Tensors [3, H, W] in the model's input format, resized as the model is tested."""
    if args.quick:
        generator = torch.Generator().manual_seed(0)
        return [torch.randint(0, 256, (3, 128, 160), generator=generator).float()
                for _ in range(2)]
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    images = []
    for path in sorted(glob.glob(args.images))[:args.num_images]:
        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
        image = resize.get_transform(image).apply_image(image)
        images.append(torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy()))
    if not images:
        raise SystemExit(f"precision_check.py: no images match {args.images}")
    return images


def load_models(args):
    quick = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
             "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
             "TEST.DETECTIONS_PER_IMAGE", "10"] if args.quick else []
    opts = ["MODEL.DEVICE", "cpu", *quick, *args.opts]
    nearest_config = args.nearest_config or args.dysample_config
    nearest_opts = opts if args.nearest_config else [
        *opts, "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"]
    weights = ("", "") if args.quick else (args.dysample_weights, args.nearest_weights)
    cfg, dysample = load_model(args.dysample_config, weights[0], opts)
    _, nearest = load_model(nearest_config, weights[1], nearest_opts)
    return cfg, {"DySample-FPN": dysample, "nearest FPN": nearest}


def export_all(models, image, directory):
    """{(model, export label, part): (path, sampler)} for part "backbone" and "model"."""
    paths = {}
    for name, model in models.items():
        for label, sampler_name, opset in EXPORTS if name == "DySample-FPN" else EXPORTS[:1]:
            for part in ("backbone", "model"):
                module = BackboneExport(model) if part == "backbone" else tracing_adapter(
                    model, image)
                path = os.path.join(directory, f"{len(paths)}.onnx")
                with sampler(sampler_name):
                    write_onnx(module, image, path, opset=opset)
                paths[(name, label, part)] = (path, sampler_name, module)
    return paths


def upsampled_levels(module) -> int:
    """How many of the finest outputs the FPN's top-down upsampling produces (p2..p4 of
    res2..res5: 3); the coarser ones (p5, p6) do not see the upsampler."""
    return len(module.backbone.in_features) - 1


def feature_drift(module, run, images, sampler_name):
    """Largest relative drift over the upsampled levels and the images."""
    drift, levels = 0.0, upsampled_levels(module)
    for image in images:
        with sampler(sampler_name), torch.no_grad():
            expected = module(image)
        diffs = max_rel_diffs(expected, run(image))
        drift = max(drift, max(diffs[i] for i in range(levels)))
    return drift


def detection_diffs(adapter, run, images, sampler_name):
    """Detections matched to eager's (same class, highest IoU): how many are unmatched
    (IoU < 0.5) of how many, and the largest score and box differences of the matched."""
    from detectron2.structures import Boxes, pairwise_iou

    names = output_names(adapter)
    boxes_i, scores_i, classes_i = (names.index(n) for n in ("pred_boxes", "scores",
                                                              "pred_classes"))
    unmatched, total, scores, boxes = 0, 0, 0.0, 0.0
    for image in images:
        with sampler(sampler_name), torch.no_grad():
            expected = adapter(image)
        actual = [torch.as_tensor(a) for a in run(image)]
        iou = pairwise_iou(Boxes(expected[boxes_i]), Boxes(actual[boxes_i]))
        iou[expected[classes_i][:, None] != actual[classes_i][None, :]] = 0
        total += len(expected[boxes_i])
        for e, (best, j) in enumerate(zip(*iou.max(dim=1)) if iou.numel() else []):
            if best < 0.5:
                unmatched += 1
                continue
            scores = max(scores, abs(expected[scores_i][e] - actual[scores_i][j]).item())
            boxes = max(boxes, (expected[boxes_i][e] - actual[boxes_i][j]).abs().max().item())
        unmatched += max(len(actual[boxes_i]) - len(expected[boxes_i]), 0)
    return f"{unmatched}/{total} unmatched; scores {scores:.1e}, boxes {boxes:.1e} px"


def whole_model(runtime, precision, path, adapter, images, sampler_name, args) -> str:
    """detection_diffs of the whole model, or why the runtime cannot load it."""
    try:
        run = load_runtime(runtime, "onnx", path, args.threads, precision)
    except Exception as e:  # e.g. the float16 converter's graph of a whole R-CNN
        return f"cannot load: {type(e).__name__}"
    return detection_diffs(adapter, run, images, sampler_name)


def latencies(runs, image, repeats):
    """Median ms of each run, interleaved: each repeat runs every one once."""
    for run in runs:
        run(image)  # warm-up
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            started = time.perf_counter()
            run(image)
            spent.append(1000 * (time.perf_counter() - started))
    return [statistics.median(t) for t in times]


def measure(paths, images, big, args):
    rows = []
    for runtime, precision in CELLS:
        for label, _, _ in EXPORTS:
            row = dict(runtime=runtime, precision=precision, export=label)
            cells = {}
            for name, keep in (("DySample-FPN", True), ("nearest FPN", True),
                               ("DySample-FPN", False)):
                key = (name, label if name == "DySample-FPN" else "GridSample")
                path, s, backbone = paths[(*key, "backbone")]
                run = load_runtime(runtime, "onnx", path, args.threads, precision, keep)
                row["ran_at"] = compiled_precision(run) or precision
                cells[(name, keep)] = dict(run=run, drift=feature_drift(backbone, run, [big], s))
                if keep:
                    model_path, s, adapter = paths[(*key, "model")]
                    cells[(name, keep)]["detections"] = whole_model(
                        runtime, precision, model_path, adapter, images, s, args)
            dysample, nearest = cells[("DySample-FPN", True)], cells[("nearest FPN", True)]
            dysample["ms"], nearest["ms"] = latencies([dysample["run"], nearest["run"]], big,
                                                      args.repeats)
            row.update(dysample=dysample, nearest=nearest,
                       dysample_unkept=cells[("DySample-FPN", False)]["drift"])
            print(f"{runtime:11s} {precision:4s} (ran {row['ran_at']}) {label:10s} drift "
                  f"DySample {dysample['drift']:.1e} (not kept {row['dysample_unkept']:.1e}), "
                  f"nearest {nearest['drift']:.1e}; x{dysample['ms'] / nearest['ms']:.3f}; "
                  f"detections DySample: {dysample['detections']}; nearest: "
                  f"{nearest['detections']}", flush=True)
            rows.append(row)
    return rows


def table(rows, info, args, num_images) -> str:
    lines = [BEGIN, ""] + header_lines(None, info) + [
        f"Feature drift: max |export - eager float32| / max "
        f"|eager| over the upsampled levels (p2..p4), backbone at "
        f"{args.size[0]}x{args.size[1]}; detections: whole model on {num_images} validation images at the test size, against eager; latency: "
        f"backbone at {args.size[0]}x{args.size[1]}, median of {args.repeats}, "
        f"{args.threads} threads.", "",
        "| runtime | precision (ran at) | DySample export | DySample drift, sampling kept "
        "f32 (not kept) | nearest drift | DySample / nearest latency | DySample detections "
        "| nearest detections |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['precision']} ({r['ran_at']}) | {r['export']} | "
            f"{r['dysample']['drift']:.1e} ({r['dysample_unkept']:.1e}) | "
            f"{r['nearest']['drift']:.1e} | {r['dysample']['ms'] / r['nearest']['ms']:.3f} "
            f"({r['dysample']['ms']:.0f} / {r['nearest']['ms']:.0f} ms) | "
            f"{r['dysample']['detections']} | {r['nearest']['detections']} |")
    return "\n".join(lines + ["", END])


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.quick:
        args.size, args.repeats = (128, 192), 1
    info = start_info("cpu", args.threads, __file__, args.quick)
    torch.set_num_threads(args.threads)
    try:
        cfg, models = load_models(args)
        images = load_images(cfg, args)
        big = torch.nn.functional.interpolate(images[0][None], size=tuple(args.size),
                                              mode="bilinear", align_corners=False)[0]
        with tempfile.TemporaryDirectory() as directory:
            paths = export_all(models, images[0], directory)
            rows = measure(paths, images, big, args)
    except ExportError as e:
        print(f"precision_check.py: {e}", file=sys.stderr)
        return 1
    info["load_end"] = load_average()
    text = table(rows, info, args, len(images))
    publish_table(text, args.docs, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
