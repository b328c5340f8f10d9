#!/usr/bin/env python
"""
Export a DySample-FPN model (TorchScript, ONNX or torch.export) and check the written export
in a runtime against eager, at the export size and at another size.

    python scripts/export_model.py \\
        --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml \\
        --weights model_final.pth --format torchscript --output export/
    python scripts/export_model.py --config-file ... --format onnx --opset 11 --output export/
    python scripts/export_model.py --config-file ... --format onnx --sampler gather \\
        --runtime openvino --output export/ [--backbone-only] [--size H W | --input IMAGE]
    python scripts/export_model.py --config-file ... --format export --backbone-only \\
        --output export/ [KEY VALUE ...]

Writes DIR/model.ts, DIR/model.onnx or DIR/model.pt2 (DIR/backbone.* with --backbone-only).
Input of the exported model: one image, float32 [3, H, W] in cfg.INPUT.FORMAT (0-255), any
H, W (torch.export programs: multiples of 32, at least 96). Outputs of the full model: a tuple
of tensors, Detectron2's ``Instances`` fields before post-processing (boxes in input-image
pixels); of the backbone: p2..p6. The script exports on --input (resized as DefaultPredictor
does) or on a random image of --size, then runs the written file in --runtime and compares
it with the eager model (sampling as the export does) at that size and at --check-size.
--sampler auto picks GridSample from opset 16 and gathers below.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes

from dysample_d2.layers import sampler as use_sampler

from dysample_d2.export import (
    DYNAMO_OPSET,
    ONNX_OPSET,
    BackboneExport,
    ExportError,
    check_opset,
    check_program_size,
    check_runtime,
    export_onnx,
    export_program,
    export_torchscript,
    load_model,
    load_runtime,
    max_abs_diffs,
    output_names,
    resolve_sampler,
    runtime_for,
    script_model,
    tracing_adapter,
)

SUFFIX = {"torchscript": ".ts", "onnx": ".onnx", "export": ".pt2"}
# the Instances fields of Detectron2's R-CNNs, typed for torch.jit.script
SCRIPTED_FIELDS = {
    "proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
    "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_masks": torch.Tensor,
}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (default: MODEL.WEIGHTS; empty: random init)")
    parser.add_argument("--format", required=True, choices=["torchscript", "onnx", "export"],
                        help="export: a torch.export program (.pt2)")
    parser.add_argument("--export-method", default="tracing", choices=["tracing", "scripting"],
                        help="TorchScript by torch.jit.trace or torch.jit.script")
    parser.add_argument("--dynamo", action="store_true",
                        help="ONNX through torch.export (torch's default exporter; opset >= 18)")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default {ONNX_OPSET}; {DYNAMO_OPSET} with --dynamo)")
    parser.add_argument("--sampler", default="auto", choices=["auto", "gridsample", "gather"],
                        help="DySample's bilinear sampling: auto = gather below opset 16")
    parser.add_argument("--runtime", default=None,
                        help="check the export in: torch, onnxruntime, openvino; none: no "
                             "check (default: torch, or onnxruntime for onnx)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="export input size (default: INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)")
    parser.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"),
                        help="second size to compare at (default: about 3/4 H, 5/4 W)")
    parser.add_argument("--input", metavar="IMAGE", help="export on this image instead")
    parser.add_argument("--backbone-only", action="store_true",
                        help="export image -> FPN features (p2..p6) only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options, KEY VALUE pairs")
    return parser


def check_arguments(args) -> str:
    """Refuse impossible combinations before building anything; return the sampler."""
    onnx = args.format == "onnx"
    if args.export_method == "scripting" and args.format != "torchscript":
        raise ExportError("--export-method scripting writes TorchScript: use --format torchscript")
    if (args.dynamo or args.opset is not None) and not onnx:
        raise ExportError("--dynamo and --opset are options of --format onnx")
    if onnx:
        args.opset = args.opset or (DYNAMO_OPSET if args.dynamo else ONNX_OPSET)
        check_opset(args.opset, "dynamo" if args.dynamo else "torchscript")
    sampler = resolve_sampler(args.sampler, args.opset if onnx else None)
    args.runtime = args.runtime or runtime_for(args.format)
    if args.runtime != "none":
        check_runtime(args.runtime, args.format)
    return sampler


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


def check_size(args, image) -> tuple:
    """The second size: --check-size, or about 3/4 H x 5/4 W (multiples of 32 for programs)."""
    if args.check_size:
        return tuple(args.check_size)
    h, w = max(32, image.shape[1] * 3 // 4), image.shape[2] * 5 // 4
    if args.format == "export":
        h, w = (max(96, -(-side // 32) * 32) for side in (h, w))
    return h, w


def compare(module, run_exported, image, size, names) -> None:
    """Print max |eager - exported| per output at the export size and at `size`."""
    for size in [tuple(image.shape[1:]), size]:
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


def write_export(args, module, image, path, sampler) -> list:
    """Write the export of `module` to `path`; return its output names."""
    with use_sampler(sampler):
        if args.format == "torchscript":
            traced = export_torchscript(module, (image,), path)
            found = args.backbone_only or len(module.outputs_schema(traced(image))[0]["instances"])
            if not found:
                print("warning: no detections on the export input; export an image with "
                      "objects (--input) to be sure every branch is recorded", file=sys.stderr)
        elif args.format == "export":
            torch.export.save(export_program(module, image), path)
        else:
            return export_onnx(module, image, path, opset=args.opset, sampler=sampler,
                               dynamo=args.dynamo)
        if args.backbone_only:
            return list(module.names)
        return output_names(module)


def export(args) -> str:
    """Export as `args` say; return the written file's path."""
    sampler = check_arguments(args)
    cfg, model = load_model(args.config_file, args.weights, args.opts)
    if not cfg.MODEL.WEIGHTS:
        print("warning: no weights given (--weights / MODEL.WEIGHTS): exporting a "
              "randomly initialised model", file=sys.stderr)
    image = trace_image(cfg, args).to(cfg.MODEL.DEVICE)
    module = BackboneExport(model) if args.backbone_only else tracing_adapter(model, image)
    if args.format == "export" or args.dynamo:
        check_program_size(module, *image.shape[1:])
    os.makedirs(args.output, exist_ok=True)
    stem = "backbone" if args.backbone_only else "model"
    path = os.path.join(args.output, stem + SUFFIX[args.format])
    if args.export_method == "scripting":  # Detectron2's scripting export, models without DySample
        script_model(model, SCRIPTED_FIELDS).save(path)
        print(f"wrote {path}; scripted models take Detectron2's list of dicts: not compared")
        return path
    names = write_export(args, module, image, path, sampler)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB), sampler {sampler}")
    if args.runtime == "none":
        return path
    run_exported = load_runtime(args.runtime, args.format, path)
    print(f"checked in {args.runtime} against eager ({sampler} sampling):")
    with use_sampler(sampler):
        compare(module.cpu(), run_exported, image.cpu(), check_size(args, image), names)
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
