#!/usr/bin/env python
"""
Export a DySample-FPN model to TorchScript or ONNX and check the export against eager.

    python scripts/export_model.py \\
        --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml \\
        --weights model_final.pth --format torchscript --output export/
    python scripts/export_model.py --config-file ... --format onnx --output export/ \\
        [--backbone-only] [--size H W | --input IMAGE] [KEY VALUE ...]

Writes DIR/model.ts or DIR/model.onnx (DIR/backbone.* with --backbone-only). Input of the
exported model: one image, float32 [3, H, W] in cfg.INPUT.FORMAT (0-255), any H, W.
Outputs of the full model: a tuple of tensors, Detectron2's ``Instances`` fields before
post-processing (boxes in input-image pixels); of the backbone: p2..p6. The script traces on
--input (resized as DefaultPredictor does) or on a random image of --size, then compares the
export with the eager model at that size and at --check-size.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from dysample_d2.export import (
    ONNX_OPSET,
    BackboneExport,
    ExportError,
    export_onnx,
    export_torchscript,
    load_model,
    max_abs_diffs,
    output_names,
    tracing_adapter,
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (default: MODEL.WEIGHTS; empty: random init)")
    parser.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="trace input size (default: INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)")
    parser.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"),
                        help="second size to compare at (default: about 3/4 H, 5/4 W)")
    parser.add_argument("--input", metavar="IMAGE", help="trace on this image instead")
    parser.add_argument("--backbone-only", action="store_true",
                        help="export image -> FPN features (p2..p6) only")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options, KEY VALUE pairs")
    return parser


def trace_image(cfg, args) -> torch.Tensor:
    """Tensor[3, H, W] float in cfg.INPUT.FORMAT: --input resized for testing, or noise."""
    if args.input:
        from detectron2.data import detection_utils
        from detectron2.data import transforms as T

        image = detection_utils.read_image(args.input, format=cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        image = resize.get_transform(image).apply_image(image)
        return torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy())
    height, width = args.size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def compare(module, run_exported, image, check_size, names) -> None:
    """Print max |eager - exported| per output at the trace size and at `check_size`."""
    sizes = [tuple(image.shape[1:])]
    h, w = check_size or (max(32, image.shape[1] * 3 // 4), image.shape[2] * 5 // 4)
    sizes.append((h, w))
    for size in sizes:
        x = image
        if size != tuple(image.shape[1:]):
            x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        with torch.no_grad():
            expected = module(x)
        actual = run_exported(x)
        try:
            diffs = max_abs_diffs(expected, actual)
        except ValueError as e:  # e.g. a score on the threshold: one more detection
            print(f"  {size[0]}x{size[1]}: outputs differ in shape: {e}")
            continue
        text = ", ".join(f"{names[i]} {d:.1e}" for i, d in diffs.items())
        first = f"{names[0]} {list(expected[0].shape)}"
        print(f"  {size[0]}x{size[1]} ({first}): max |eager - export|: {text}")


def export(args) -> str:
    """Export as `args` say; return the written file's path."""
    cfg, model = load_model(args.config_file, args.weights, args.opts)
    if not cfg.MODEL.WEIGHTS:
        print("warning: no weights given (--weights / MODEL.WEIGHTS): exporting a "
              "randomly initialised model", file=sys.stderr)
    image = trace_image(cfg, args).to(cfg.MODEL.DEVICE)
    if args.backbone_only:
        module = BackboneExport(model)
        names = module.names
    else:
        module = tracing_adapter(model, image)
    os.makedirs(args.output, exist_ok=True)
    stem = "backbone" if args.backbone_only else "model"

    if args.format == "torchscript":
        path = os.path.join(args.output, stem + ".ts")
        traced = export_torchscript(module, (image,), path)
        run_exported = traced
        if not args.backbone_only:
            names = output_names(module)
            if len(module.outputs_schema(traced(image))[0]["instances"]) == 0:
                print("warning: no detections on the trace input; trace on an image with "
                      "objects (--input) to be sure every branch is recorded", file=sys.stderr)
    else:
        path = os.path.join(args.output, stem + ".onnx")
        names = export_onnx(module, image, path, opset=args.opset)
        try:
            import onnxruntime
        except ImportError:
            print(f"wrote {path}; onnxruntime is not installed (pip install -e '.[export]'): "
                  "not compared with eager")
            return path
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        image = image.cpu()
        module = module.cpu() if cfg.MODEL.DEVICE != "cpu" else module

        def run_exported(x):
            return session.run(None, {"image": x.numpy()})

    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    compare(module, run_exported, image, args.check_size, names)
    return path


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        export(args)
    except ExportError as e:
        print(f"export_model.py: cannot export: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, AssertionError, ValueError) as e:  # config / checkpoint input
        print(f"export_model.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
