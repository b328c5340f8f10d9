"""
torch.export of DySample-FPN models, with dynamic height and width.

The backbone (:class:`~dysample_d2.export.model.BackboneExport`) exports; its input height
and width are free symbolic sizes, padded inside the program to a multiple of the backbone's
size divisibility (32 for FPNs) as the model pads them, so a program (also one saved to .pt2
and loaded again) takes any size from 65 to 8192 pixels for FPNs. The padded side must be at
least 3 multiples (96 pixels): a 1-pixel level (p6 of a 64-pixel padded side) would
specialise the graph. Declaring the input sizes as multiples instead (``32 * Dim(...)``)
exports too, but a saved and loaded program with such derived sizes fails in torch's
``run_decompositions`` ("expected sympy.Symbol"), which OpenVINO's converter runs.

Whole R-CNNs do not export: Detectron2's heads branch in Python on tensor values
(``find_top_rpn_proposals``: ``if not valid_mask.all()`` and ``keep.sum().item()``;
``fast_rcnn_inference_single_image``: ``if not valid_mask.all()``), which torch.export cannot
record without ``torch.cond``. :func:`export_program` tries and raises :class:`ExportError`
naming the line, so a Detectron2 that changes this exports as soon as it can.
"""
import contextlib
import os
import traceback

import torch
from torch import nn
from torch.export import Dim

from detectron2.export import TracingAdapter
from detectron2.structures import ImageList

from .model import BackboneExport, pad_image
from .tracing import ExportError, failing_module, first_line, quiet_tracing

__all__ = ["export_program", "check_program_size"]

MIN_STEPS = 3  # smallest padded side, in multiples of the size divisibility
MAX_STEPS = 256  # largest side, in multiples of the size divisibility


def _backbone(module: nn.Module) -> nn.Module:
    return module.backbone if isinstance(module, BackboneExport) else module.model.backbone


def _size_range(module: nn.Module) -> tuple:
    """(smallest, largest) height and width, in pixels, an exported program takes, and the
    size divisibility it pads them to."""
    divisor = max(_backbone(module).size_divisibility, 1)
    return (MIN_STEPS - 1) * divisor + 1, MAX_STEPS * divisor, divisor


def check_program_size(module: nn.Module, height: int, width: int) -> None:
    """ExportError unless an exported program of `module` takes an image of this size."""
    low, high, divisor = _size_range(module)
    if not (low <= height <= high and low <= width <= high):
        raise ExportError(
            f"torch.export programs take images whose height and width are from {low} to "
            f"{high} pixels (any size between; padded inside to multiples of {divisor}), got "
            f"{height}x{width}"
        )


@contextlib.contextmanager
def _padding_with_integer_sizes(module: nn.Module):
    """A whole model's ``preprocess_image`` padding with :func:`pad_image` inside."""
    if not isinstance(module, TracingAdapter):
        yield
        return
    model = module.model

    def preprocess_image(batched_inputs):
        images = [(x["image"].to(model.device) - model.pixel_mean) / model.pixel_std
                  for x in batched_inputs]
        assert len(images) == 1, "one image per exported call"
        return ImageList(pad_image(images[0], model.backbone), [tuple(images[0].shape[-2:])])

    model.preprocess_image = preprocess_image
    try:
        yield
    finally:
        del model.preprocess_image


def export_program(module: nn.Module, image: torch.Tensor) -> torch.export.ExportedProgram:
    """
    ``torch.export`` `module` (BackboneExport, or a TracingAdapter of a whole model) with
    input ``image`` [3, H, W], for runtimes that take programs (``torch.export.save``,
    OpenVINO's converter) and for the torch.export-based ONNX exporter. H and W are dynamic:
    any size :func:`check_program_size` accepts (see the module docstring).

    Raises:
        ExportError: naming the module and source line torch.export could not record.
    """
    check_program_size(module, *image.shape[1:])
    low, high, _ = _size_range(module)
    # free sizes, not multiples (divisor * Dim): a saved program with derived sizes does not
    # load into torch's decompositions (and so not into OpenVINO)
    shapes = ({1: Dim("height", min=low, max=high), 2: Dim("width", min=low, max=high)},)
    if isinstance(module, TracingAdapter):  # forward(*args): one entry for all the args
        shapes = (shapes,)
    try:
        with quiet_tracing(), _padding_with_integer_sizes(module):
            return torch.export.export(module, (image,), dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise ExportError(_program_failure(e, module)) from e


def _program_failure(exc: Exception, module: nn.Module) -> str:
    """Where torch.export failed: the module, the innermost model source line, and why."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_model_source(f.filename)]
    line = ""
    if frames:
        f = frames[-1]
        line = f" at {_short_path(f.filename)}:{f.lineno} `{(f.line or '').strip()}`"
    name = type(exc).__name__
    if "DataDependent" in name:
        why = ("a Python branch or size on tensor values, which torch.export cannot record "
               "(it would need torch.cond)")
    else:
        why = first_line(exc)
    whole = isinstance(module, TracingAdapter)
    ways = ("Export the backbone with torch.export (--backbone-only), or the whole model by "
            "tracing (--format torchscript or onnx)." if whole else "")
    return (f"torch.export failed in {failing_module(exc, module)}{line}: {name}: {why}. "
            f"{ways}").strip()


def _is_model_source(filename: str) -> bool:
    parts = filename.replace(os.sep, "/")
    in_model = "/detectron2/" in parts or "/dysample_d2/" in parts
    return in_model and "/dysample_d2/export/" not in parts


def _short_path(filename: str) -> str:
    parts = filename.replace(os.sep, "/")
    for root in ("detectron2/", "dysample_d2/"):
        if root in parts:
            return root + parts.rsplit(root, 1)[1]
    return filename
