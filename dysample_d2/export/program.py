"""
torch.export of DySample-FPN models, with dynamic height and width.

The backbone (:class:`~dysample_d2.export.model.BackboneExport`) exports; its input height
and width are symbolic multiples of the backbone's size divisibility (32 for FPNs), at least
3 of them: torch.export proves the stride-2 convolutions' output sizes only for padded
sizes, and a 1-pixel level (p6 of a 64-pixel side) would specialise the graph.

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

from .model import BackboneExport, ExportError, pad_image
from .tracing import _failing_module, _first_line, _quiet_tracing

__all__ = ["MIN_STEPS", "export_program", "check_program_size"]

MIN_STEPS = 3  # smallest exported side, in multiples of the size divisibility
MAX_STEPS = 256


def _backbone(module: nn.Module) -> nn.Module:
    return module.backbone if isinstance(module, BackboneExport) else module.model.backbone


def check_program_size(module: nn.Module, height: int, width: int) -> None:
    """ExportError unless an exported program of `module` takes an image of this size."""
    divisor = max(_backbone(module).size_divisibility, 1)
    for side in (height, width):
        if side % divisor or not MIN_STEPS <= side // divisor <= MAX_STEPS:
            raise ExportError(
                f"torch.export programs take images whose height and width are multiples of "
                f"{divisor} from {MIN_STEPS * divisor} to {MAX_STEPS * divisor}, got "
                f"{height}x{width}: pad the image (bottom and right, zeros after "
                "normalisation), as the model pads it"
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
    torch.export `module` (BackboneExport, or a TracingAdapter of a whole model) with input
    ``image`` [3, H, W]; H and W are dynamic (see the module docstring).

    Raises:
        ExportError: naming the module and source line torch.export could not record.
    """
    check_program_size(module, *image.shape[1:])
    divisor = max(_backbone(module).size_divisibility, 1)
    height = Dim("height", min=MIN_STEPS, max=MAX_STEPS)
    width = Dim("width", min=MIN_STEPS, max=MAX_STEPS)
    shapes = ({1: divisor * height, 2: divisor * width},)
    if isinstance(module, TracingAdapter):  # forward(*args): one entry for all the args
        shapes = (shapes,)
    try:
        with _quiet_tracing(), _padding_with_integer_sizes(module):
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
        why = _first_line(exc)
    whole = isinstance(module, TracingAdapter)
    ways = ("Export the backbone with torch.export (--backbone-only), or the whole model by "
            "tracing (--format torchscript or onnx)." if whole else "")
    return (f"torch.export failed in {_failing_module(exc, module)}{line}: {name}: {why}. "
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
