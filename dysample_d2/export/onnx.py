"""
ONNX export: the TorchScript-based exporter (``dynamo=False``, opsets 11-20) on a trace,
or torch's default, torch.export-based exporter (``dynamo=True``, opsets 18-23; the
backbone only, see :mod:`.program`; needs the ``onnxscript`` package). Height and width are
dynamic; DySample samples with GridSample or gathers (:mod:`.samplers`).
"""
import re

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.layers import ROIAlign

from .model import BackboneExport, ExportError
from .precision import tag_sampling_nodes
from ..layers import sampler as use_sampler
from .samplers import check_opset, resolve_sampler
from .tracing import (_failing_module, _first_line, _quiet_tracing, _scope_to_name, trace_model,
                      warn_if_no_detections)

__all__ = ["ONNX_OPSET", "DYNAMO_OPSET", "export_onnx", "output_names"]

ONNX_OPSET = 17
DYNAMO_OPSET = 18


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
                sampler: str = "auto", dynamo: bool = False):
    """
    Export `module` (TracingAdapter or BackboneExport) with input ``image`` [3, H, W] to
    ONNX with dynamic H, W (and dynamic output sizes, e.g. the number of detections).

    Args:
        opset: default ONNX_OPSET (DYNAMO_OPSET with ``dynamo``).
        sampler: "auto", "gridsample" or "gather" (see :mod:`.samplers`).
        dynamo: the torch.export-based exporter (H and W as torch.export programs take them).

    Returns:
        list[str]: the output names.
    """
    opset = opset or (DYNAMO_OPSET if dynamo else ONNX_OPSET)
    check_opset(opset, "dynamo" if dynamo else "torchscript")
    _check_roi_align(module, opset)
    with use_sampler(resolve_sampler(sampler, opset)):
        if dynamo:
            return _export_dynamo(module, image, path, opset)
        return _export_torchscript_based(module, image, path, opset)


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
            f"ONNX opset {opset}: {_scope_to_name(where[0])} is ROIAlign with aligned=True "
            "(ROIAlignV2), which ONNX RoiAlign has only from opset 16 (below, torchvision "
            "drops the half-pixel offset and the boxes change); use opset >= 16, or export "
            "the backbone only"
        )


def _export_torchscript_based(module, image, path, opset):
    with _quiet_tracing():
        outputs = module(image)  # a TracingAdapter records its outputs_schema here
    warn_if_no_detections(module, outputs)
    names = list(module.names) if isinstance(module, BackboneExport) else output_names(module)
    dynamic = {"image": {1: "height", 2: "width"}}
    for name, out in zip(names, outputs):
        dynamic[name] = {d: f"{name}_dim{d}" for d in range(out.dim())}
    try:
        with _quiet_tracing():
            torch.onnx.export(
                module, (image,), path, opset_version=opset, dynamo=False,
                input_names=["image"], output_names=names, dynamic_axes=dynamic,
            )
    except Exception as e:
        raise ExportError(_onnx_failure(e, module, image, opset)) from e
    finally:
        module.eval()  # the exporter restores the mode the outer module had
    tag_sampling_nodes(path, module)  # findable, kept in float32 at low precision
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
        with _quiet_tracing():
            # weights inside the file (external_data=False): one file to rename and ship
            torch.onnx.export(program, (image,), path, opset_version=opset, dynamo=True,
                              input_names=["image"], output_names=names, verbose=False,
                              external_data=False)
    except Exception as e:
        raise ExportError(f"ONNX export (dynamo) failed: {type(e).__name__}: "
                          f"{_first_line(e)}") from e
    return names


def _onnx_failure(exc: Exception, module: nn.Module, image: torch.Tensor, opset: int) -> str:
    """Say which op could not be converted and in which module, from a trace of `module`."""
    text = str(exc)
    match = re.search(r"(?:operator|namespace|function call|PythonOp) '?([\w:.]+)'?", text)
    if match is None:  # raised while running the model, not while converting ops
        return (f"ONNX export failed in {_failing_module(exc, module)}: "
                f"{type(exc).__name__}: {_first_line(exc)}")
    op = match.group(1)
    traced = trace_model(module, (image,))  # raises itself for Python autograd functions
    where = sorted({
        _scope_to_name(n.scopeName()) for n in traced.inlined_graph.nodes() if n.kind() == op
    })
    place = f" (used in {', '.join(where[:3])}{' ...' if len(where) > 3 else ''})" if where else ""
    return (f"ONNX export failed: operator {op}{place} has no ONNX conversion at opset "
            f"{opset}. Export the backbone only, or the TorchScript format. "
            f"({_first_line(exc)})")


