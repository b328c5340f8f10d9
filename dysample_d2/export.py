"""
Export of DySample-FPN models to TorchScript (tracing) and ONNX.

Both formats trace with :func:`torch.jit.trace`: Detectron2's
:class:`~detectron2.export.TracingAdapter` flattens the inputs/outputs of
``model.inference(..., do_postprocess=False)`` (as Detectron2's exporter does) to tuples of
tensors, and DySample builds its sampling grid from tensor shapes while tracing
(``_traced_base_grid``), so one trace runs at any input size.

ONNX: the TorchScript-based exporter, ``torch.onnx.export(..., dynamo=False)``, opset 17
(grid_sample needs >= 16), dynamic height/width axes. Not the torch.export-based exporter
(torch's default since 2.9): it needs the extra ``onnxscript`` package, and torch.export
of this model fails today (in DySample's traced-grid path, which torch.export also takes:
its repeat_interleave fails under fake tensors). Faster/Mask R-CNN export whole (torchvision's
roi_align and nms have ONNX conversions); :class:`BackboneExport` gives the FPN features.

Parts that cannot be exported (e.g. Detectron2's deformable conv, a Python autograd
function) raise :class:`ExportError` naming the op and the module.
"""
import contextlib
import re
import traceback
import warnings

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.modeling import GeneralizedRCNN, PanopticFPN
from detectron2.structures import ImageList

__all__ = [
    "ExportError",
    "load_model",
    "BackboneExport",
    "tracing_adapter",
    "trace_model",
    "export_torchscript",
    "export_onnx",
    "output_names",
    "max_abs_diffs",
]

ONNX_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the part of the model and why."""


def load_model(config_file: str, weights=None, opts=()):
    """
    Build the model of a config file (+ command-line `opts`) in eval mode and load
    `weights` (default: MODEL.WEIGHTS; none: random init) strictly. CPU unless CUDA exists.

    Returns:
        (CfgNode, nn.Module)
    """
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from .config import add_dysample_config
    from .engine import check_config_file, load_exact_checkpoint

    check_config_file(config_file)
    cfg = get_cfg()
    add_dysample_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_exact_checkpoint(model, cfg.MODEL.WEIGHTS)
    return cfg, model


def _inference_func(model):
    """(model, image[3, H, W]) -> outputs, without resizing to the original image size."""
    def rcnn(model, image):
        return [{"instances": model.inference([{"image": image}], do_postprocess=False)[0]}]

    def panoptic(model, image):
        instances, sem_seg = model.inference([{"image": image}], do_postprocess=False)
        return [{"instances": instances[0], "sem_seg": sem_seg[0]}]

    def other(model, image):  # e.g. RetinaNet: traceable, resizes to the input's own size
        return model([{"image": image}])

    if isinstance(model, PanopticFPN):
        return panoptic
    return rcnn if isinstance(model, GeneralizedRCNN) else other


def tracing_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """
    Args:
        model: a Detectron2 meta-architecture.
        image (Tensor[3, H, W]): float, cfg.INPUT.FORMAT, 0-255 (``batched_inputs[i]["image"]``).

    Returns:
        TracingAdapter (eval mode): image -> tuple of tensors;
        ``adapter.outputs_schema(outputs)`` rebuilds ``[{"instances": Instances, ...}]``.
    """
    return TracingAdapter(model.eval(), (image,), _inference_func(model)).eval()


class BackboneExport(nn.Module):
    """
    The features the model's heads see: normalizes the image, pads it to a multiple of
    ``backbone.size_divisibility`` as ``model.preprocess_image`` does, runs the backbone.

    Shapes: image [3, H, W] (model input format, 0-255) -> tuple of [1, C, H_k, W_k], one per
    ``self.names`` ("p2", ..., "p6").
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone.eval()  # only what is used: a smaller export
        self.register_buffer("pixel_mean", model.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", model.pixel_std, persistent=False)
        shapes = self.backbone.output_shape()
        self.names = sorted(shapes, key=lambda k: shapes[k].stride)

    def forward(self, image: torch.Tensor):
        x = (image.to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std
        x = ImageList.from_tensors(
            [x], self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        ).tensor
        features = self.backbone(x)
        return tuple(features[k] for k in self.names)


# Known-harmless messages while tracing/exporting: the tracer's view of Detectron2's shape
# and finiteness asserts (boxes.py, nms.py, fast_rcnn.py, ...), aten::index on indices from
# nonzero() (never negative) in the heads, and torch's deprecation notes on TorchScript.
_IGNORED = (r".*advanced indexing .* negative values", r".*legacy TorchScript-based ONNX",
            r".*is_fx_tracing", r"`torch\.jit\.\w+` is deprecated")


@contextlib.contextmanager
def _quiet_tracing():
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"(detectron2|torch|torchvision)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        for message in _IGNORED:
            warnings.filterwarnings("ignore", message=message)
        yield


def _scope_to_name(scope: str) -> str:
    """'__module.model/__module.model.backbone.fpn_output2' -> 'backbone.fpn_output2'."""
    name = scope.split("/")[-1].replace("__module.", "", 1)
    return re.sub(r"^model\.?", "", name) or "(top level)"


def _failing_module(exc: BaseException, root: nn.Module) -> str:
    """Name (and class) of the innermost module of `root` in the exception's traceback."""
    names = {id(m): n for n, m in root.named_modules()}
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if obj is not None and id(obj) in names:
            found = f"{_scope_to_name(names[id(obj)])} ({type(obj).__name__})"
    return found or f"(top level) ({type(root).__name__})"


def _check_python_ops(traced: torch.jit.ScriptModule) -> None:
    """Python autograd functions are kept as opaque calls: neither format can save them."""
    calls = {}
    for node in traced.inlined_graph.nodes():
        if node.kind() == "prim::PythonOp":
            calls.setdefault(node.pyname(), []).append(_scope_to_name(node.scopeName()))
    for op, where in calls.items():
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        raise ExportError(
            f"{where[0]}{more} call(s) the Python autograd function {op!r}, which cannot be "
            "exported: TorchScript cannot serialize Python calls and ONNX has no conversion "
            "for them. Use a config without this op."
        )


def trace_model(module: nn.Module, inputs) -> torch.jit.ScriptModule:
    """
    torch.jit.trace `module` (a TracingAdapter or BackboneExport) on `inputs` (a tuple).

    Raises:
        ExportError: naming the module where tracing failed or a Python op was traced.
    """
    try:
        with _quiet_tracing():
            traced = torch.jit.trace(module, inputs, check_trace=False)
    except Exception as e:
        raise ExportError(
            f"tracing failed in {_failing_module(e, module)}: {type(e).__name__}: "
            f"{_first_line(e)}"
        ) from e
    _check_python_ops(traced)
    return traced


def export_torchscript(module: nn.Module, inputs, path: str) -> torch.jit.ScriptModule:
    """Trace `module` on `inputs` and save the trace to `path` (load with torch.jit.load)."""
    traced = trace_model(module, inputs)
    torch.jit.save(traced, path)
    return traced


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


def export_onnx(module: nn.Module, image: torch.Tensor, path: str, opset: int = ONNX_OPSET):
    """
    Export `module` (TracingAdapter or BackboneExport) with input ``image`` [3, H, W] to
    ONNX with dynamic H, W (and dynamic output sizes, e.g. the number of detections).

    Returns:
        list[str]: the output names.
    """
    if opset < 16:
        raise ExportError(f"ONNX opset {opset}: DySample's grid_sample needs opset >= 16")
    with _quiet_tracing():
        outputs = module(image)  # a TracingAdapter records its outputs_schema here
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


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def max_abs_diffs(expected, actual) -> dict:
    """{i: max |expected[i] - actual[i]|} of two tuples of tensors (or arrays); raises
    ValueError if their number or shapes differ (e.g. one detection more)."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} outputs expected, got {len(actual)}")
    diffs = {}
    for i, (a, b) in enumerate(zip(expected, actual)):
        b = torch.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"output {i}: shape {tuple(a.shape)} expected, got {tuple(b.shape)}")
        diffs[i] = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return diffs
