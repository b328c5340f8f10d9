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
H, W (torch.export programs and --dynamo files: 65 to 8192). Outputs of the full model: a tuple
of tensors, Detectron2's ``Instances`` fields before post-processing (boxes in input-image
pixels); of the backbone: p2..p6. The script exports on --input (resized as DefaultPredictor
does) or on a random image of --size, then runs the written file in --runtime and compares
it with the eager model (sampling as the export does) at that size and at --check-size.
The file is written under a temporary name (model.partial.onnx, ...) and renamed once the
check passed; a failed check removes it. --sampler auto picks gathers below opset 16, and from
opset 16 the faster export for --runtime (tools.deploy.export_sampler). --precision runs the
check at bf16 / f16 (DySample's sampling kept in float32, tools/deploy/precision.py).
"""
import argparse
import os
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # tools/, the repository's tooling package

import dysample_d2  # noqa: F401,E402  (first: imports Detectron2's models without their warnings)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from tools.engine import UserInputError  # noqa: E402
from dysample_d2.export import (  # noqa: E402
    BackboneExport,
    ExportError,
    export_program,
    tracing_adapter,
)
from dysample_d2.export.onnx import DYNAMO_OPSET, ONNX_OPSET, output_names  # noqa: E402
from dysample_d2.export.program import check_program_size  # noqa: E402
from dysample_d2.layers import sampler as use_sampler  # noqa: E402
from tools.deploy import (  # noqa: E402
    PRECISIONS,
    ExportWarning,
    check_opset,
    check_runtime,
    export_sampler,
    load_model,
    load_runtime,
    max_abs_diffs,
    runtime_for,
    script_model,
    write_onnx,
    write_torchscript,
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
                        help="DySample's bilinear sampling: auto = gather below opset 16, "
                             "else the faster one for --runtime")
    parser.add_argument("--runtime", default=None,
                        help="check the export in: torch, onnxruntime, openvino; none: no "
                             "check (default: torch, or onnxruntime for onnx)")
    parser.add_argument("--precision", default="f32",
                        help="inference precision of the check: f32; openvino also bf16, f16, "
                             "default (its own choice); onnxruntime also f16")
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
    args.runtime = args.runtime or runtime_for(args.format)
    if args.runtime != "none":
        check_runtime(args.runtime, args.format)
    allowed = PRECISIONS.get(args.runtime, ("f32",))
    if args.precision not in allowed:
        raise ExportError(f"--precision {args.precision}: runtime {args.runtime} checks at "
                          f"{', '.join(allowed)}")
    if args.runtime == "onnxruntime" and args.precision == "f16" and not args.backbone_only:
        raise ExportError("--precision f16 in onnxruntime checks the backbone only: onnxruntime's "
                          "float16 converter writes an invalid graph for whole R-CNNs (their If "
                          "subgraphs); add --backbone-only, or check the whole model at f32")
    runtime = None if args.runtime == "none" else args.runtime
    return export_sampler(args.sampler, args.opset if onnx else None, runtime)


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
    """The second size: --check-size, or about 3/4 H x 5/4 W (at least 96 for programs)."""
    if args.check_size:
        return tuple(args.check_size)
    h, w = max(32, image.shape[1] * 3 // 4), image.shape[2] * 5 // 4
    if args.format == "export" or args.dynamo:  # programs take sides from 65 pixels
        h, w = max(96, h), max(96, w)
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
    """Write the export of `module` to `path`; return its output names. Export warnings
    (e.g. no detections on the export input) are printed as `warning: ...`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportWarning)
        names = _write_export(args, module, image, path, sampler)
    for w in caught:
        if issubclass(w.category, ExportWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return names


def _write_export(args, module, image, path, sampler) -> list:
    with use_sampler(sampler):
        if args.format == "torchscript":
            write_torchscript(module, (image,), path)
        elif args.format == "export":
            torch.export.save(export_program(module, image), path)
        else:
            return write_onnx(module, image, path, opset=args.opset, dynamo=args.dynamo)
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
        check_program_size(module, *check_size(args, image))
    os.makedirs(args.output, exist_ok=True)
    stem = "backbone" if args.backbone_only else "model"
    path = os.path.join(args.output, stem + SUFFIX[args.format])
    if args.export_method == "scripting":  # Detectron2's scripting export, models without DySample
        script_model(model, SCRIPTED_FIELDS).save(path)
        print(f"wrote {path}; scripted models take Detectron2's list of dicts: not compared")
        return path
    # written under a temporary name, renamed once checked: no half-checked file is left
    partial = os.path.join(args.output, stem + ".partial" + SUFFIX[args.format])
    try:
        names = write_export(args, module, image, partial, sampler)
        size_mib = os.path.getsize(partial) / 2**20
        if args.runtime != "none":
            check_export(args, module, image, partial, sampler, names)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)
    print(f"wrote {path} ({size_mib:.1f} MiB), sampler {sampler}"
          + ("" if args.runtime != "none" else " (not checked: --runtime none)"))
    return path


def check_export(args, module, image, path, sampler, names) -> None:
    """Run the written file in args.runtime against eager; ExportError if it cannot run."""
    size = check_size(args, image)
    try:
        run_exported = load_runtime(args.runtime, args.format, path, precision=args.precision)
        print(f"checked in {args.runtime} ({args.precision}) against eager ({sampler} "
              "sampling):")
        with use_sampler(sampler):
            compare(module.cpu(), run_exported, image.cpu(), size, names)
    except ExportError:
        raise
    except Exception as e:  # the runtime refuses the file or an input size
        first = next((line.strip() for line in str(e).splitlines() if line.strip()),
                     type(e).__name__)
        raise ExportError(f"the export did not pass its check in {args.runtime}: "
                          f"{type(e).__name__}: {first[:300]}") from e


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        export(args)
    except ExportError as e:
        print(f"export_model.py: cannot export: {e}", file=sys.stderr)
        return 1
    except UserInputError as e:  # config, checkpoint: one line, as train_net.py prints it
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
