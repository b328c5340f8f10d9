"""
ONNX export: the TorchScript-based exporter (``dynamo=False``) on a trace, or torch's
torch.export-based exporter (``dynamo=True``, opsets from 18; the backbone only, see
:mod:`.program`; needs the ``onnxscript`` package). Height and width are dynamic.

DySample exports with the sampler that ``dysample_d2.layers.sampler`` sets: ONNX GridSample
("auto", "gridsample"; opset >= 16) or gathers and arithmetic ("gather"; any opset, and
runtimes without a usable GridSample)::

    with dysample_d2.layers.sampler("gather"):
        export_onnx(BackboneExport(model), image, "backbone.onnx", opset=11)
"""
import re

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.layers import ROIAlign

from ..layers import DySample, active_sampler
from .model import BackboneExport
from .tracing import (ExportError, failing_module, first_line, module_name, quiet_tracing,
                      trace_model)

__all__ = ["ONNX_OPSET", "DYNAMO_OPSET", "GRIDSAMPLE_MIN_OPSET", "export_onnx", "output_names"]

ONNX_OPSET = 17  # export_onnx's default opset (DYNAMO_OPSET with dynamo=True)
DYNAMO_OPSET = 18
GRIDSAMPLE_MIN_OPSET = 16  # the first opset with GridSample


def output_names(adapter: TracingAdapter) -> list:
    """Names of the flattened outputs, e.g. ["pred_boxes", "pred_classes", ..., "image_size"]."""

    def names(schema, prefix):
        if isinstance(schema, DictSchema):
            keys = [f"{prefix}{k}" for k in schema.keys]
            sub = [n for s, k in zip(schema.schemas, keys) for n in names(s, k + ".")]
            return sub + ([f"{prefix}image_size"] if isinstance(schema, InstancesSchema) else [])
        if isinstance(schema, ListSchema):
            if len(schema.schemas) == 1:
                return names(schema.schemas[0], prefix)
            return [n for i, s in enumerate(schema.schemas) for n in names(s, f"{prefix}{i}.")]
        return [prefix.rstrip(".")]

    full = [n or f"output{i}" for i, n in enumerate(names(adapter.outputs_schema, ""))]
    short = [n.rsplit(".", 1)[-1] for n in full]  # "instances.pred_boxes" -> "pred_boxes"
    return short if len(set(short)) == len(short) else full


def export_onnx(module: nn.Module, image: torch.Tensor, path: str, opset: int = None,
                dynamo: bool = False) -> list:
    """
    Export `module` (a :func:`.tracing_adapter` or :class:`.BackboneExport`) with input
    ``image`` [3, H, W] to ONNX with dynamic H, W (and dynamic output sizes, e.g. the number
    of detections), DySample sampling as the active ``dysample_d2.layers.sampler`` says.

    Args:
        opset: default ONNX_OPSET (DYNAMO_OPSET with ``dynamo``).
        dynamo: the torch.export-based exporter (H and W as torch.export programs take them).

    Returns:
        list[str]: the output names (:func:`output_names`; p2, ... for a backbone).

    Raises:
        ExportError: GridSample or ROIAlignV2 below opset 16, or an op without conversion,
            naming the module.
    """
    opset = opset or (DYNAMO_OPSET if dynamo else ONNX_OPSET)
    _check_grid_sample(module, opset)
    _check_roi_align(module, opset)
    if dynamo:
        return _export_dynamo(module, image, path, opset)
    return _export_torchscript_based(module, image, path, opset)


def _check_grid_sample(module: nn.Module, opset: int) -> None:
    """DySample's GridSample sampling below the opset that has GridSample."""
    if opset >= GRIDSAMPLE_MIN_OPSET or active_sampler() == "gather":
        return
    where = [name for name, m in module.named_modules() if isinstance(m, DySample)]
    if where:
        raise ExportError(
            f"ONNX opset {opset}: GridSample needs opset >= {GRIDSAMPLE_MIN_OPSET}; use the "
            f"gather sampler (with dysample_d2.layers.sampler(\"gather\"): ...) for "
            f"{module_name(where[0])}, or a newer opset"
        )


def _check_roi_align(module: nn.Module, opset: int) -> None:
    """
    Below opset 16 torchvision writes ROIAlign as ONNX RoiAlign without ``aligned=True``'s
    half-pixel offset (warning only): Detectron2's ROIAlignV2 poolers would pool other pixels.
    """
    if opset >= 16:
        return
    where = [name for name, m in module.named_modules()
             if isinstance(m, ROIAlign) and getattr(m, "aligned", False)]
    if where:
        raise ExportError(
            f"ONNX opset {opset}: {module_name(where[0])} is ROIAlign with aligned=True "
            "(ROIAlignV2), which ONNX RoiAlign has only from opset 16 (below, torchvision "
            "drops the half-pixel offset and the boxes change); use opset >= 16, or export "
            "the backbone only"
        )


def _export_torchscript_based(module, image, path, opset):
    with quiet_tracing():
        outputs = module(image)  # a TracingAdapter records its outputs_schema here
    names = list(module.names) if isinstance(module, BackboneExport) else output_names(module)
    dynamic = {"image": {1: "height", 2: "width"}}
    for name, out in zip(names, outputs):
        dynamic[name] = {d: f"{name}_dim{d}" for d in range(out.dim())}
    try:
        with quiet_tracing():
            torch.onnx.export(
                module, (image,), path, opset_version=opset, dynamo=False,
                input_names=["image"], output_names=names, dynamic_axes=dynamic,
            )
    except Exception as e:
        raise ExportError(_onnx_failure(e, module, image, opset)) from e
    finally:
        module.eval()  # the exporter restores the mode the outer module had
    return names


def _export_dynamo(module, image, path, opset):
    from .program import export_program

    try:
        import onnxscript  # noqa: F401  (the exporter's op library)
    except ImportError as e:
        raise ExportError("the torch.export-based ONNX exporter needs onnxscript: "
                          "pip install -e '.[deploy]'") from e
    program = export_program(module, image)  # ExportError for whole models
    names = list(module.names)
    try:
        with quiet_tracing():
            # weights inside the file (external_data=False): one file to rename and ship
            torch.onnx.export(program, (image,), path, opset_version=opset, dynamo=True,
                              input_names=["image"], output_names=names, verbose=False,
                              external_data=False)
    except Exception as e:
        raise ExportError(f"ONNX export (dynamo) failed: {type(e).__name__}: "
                          f"{first_line(e)}") from e
    return names


def _onnx_failure(exc: Exception, module: nn.Module, image: torch.Tensor, opset: int) -> str:
    """Say which op could not be converted and in which module, from a trace of `module`."""
    text = str(exc)
    match = re.search(r"(?:operator|namespace|function call|PythonOp) '?([\w:.]+)'?", text)
    if match is None:  # raised while running the model, not while converting ops
        return (f"ONNX export failed in {failing_module(exc, module)}: "
                f"{type(exc).__name__}: {first_line(exc)}")
    op = match.group(1)
    traced = trace_model(module, (image,))  # raises itself for Python autograd functions
    where = sorted({
        module_name(n.scopeName()) for n in traced.inlined_graph.nodes() if n.kind() == op
    })
    place = f" (used in {', '.join(where[:3])}{' ...' if len(where) > 3 else ''})" if where else ""
    return (f"ONNX export failed: operator {op}{place} has no ONNX conversion at opset "
            f"{opset}. Export the backbone only, or the TorchScript format. "
            f"({first_line(exc)})")
