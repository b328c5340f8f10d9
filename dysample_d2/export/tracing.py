"""
TorchScript export by tracing, and the error reports every format shares.

:func:`torch.jit.trace` records ``model.inference(..., do_postprocess=False)`` flattened by
Detectron2's :class:`~detectron2.export.TracingAdapter` (as Detectron2's exporter does), or
:class:`~dysample_d2.export.model.BackboneExport`; DySample builds its sampling grid from
tensor shapes while tracing, so one trace runs at any input size. Parts that cannot be
recorded (e.g. Detectron2's deformable conv, a Python autograd function) raise
:class:`ExportError` naming the op and the module. ``torch.jit.script`` is refused
(:func:`script_model`).
"""
import contextlib
import re
import traceback
import warnings

import torch
from torch import nn

from .model import ExportError

__all__ = ["trace_model", "export_torchscript", "script_model", "ExportWarning",
           "warn_if_no_detections"]

NO_DETECTIONS = ("no detections on the export input: the trace records the branches taken "
                 "without detections only; export on an image with objects (--input) to be "
                 "sure every branch is recorded")


class ExportWarning(UserWarning):
    """An export that was written but may not behave as the model does on other inputs."""

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


def warn_if_no_detections(module: nn.Module, outputs) -> bool:
    """
    Warn (:class:`ExportWarning`) if `module`, a TracingAdapter of a whole model, found no
    detections in `outputs` (its flattened outputs on the export input): a trace records only
    the branches that input takes. Every export by tracing (TorchScript, ONNX) calls this.

    Returns:
        bool: whether it warned.
    """
    from detectron2.export import TracingAdapter

    if not isinstance(module, TracingAdapter):
        return False
    results = module.outputs_schema(outputs)
    instances = [r["instances"] for r in results if isinstance(r, dict) and "instances" in r]
    if instances and all(len(i) == 0 for i in instances):
        warnings.warn(NO_DETECTIONS, ExportWarning, stacklevel=2)
        return True
    return False


def export_torchscript(module: nn.Module, inputs, path: str) -> torch.jit.ScriptModule:
    """Trace `module` on `inputs` and save the trace to `path` (load with torch.jit.load);
    warns if a whole model finds no detections on `inputs` (:func:`warn_if_no_detections`)."""
    traced = trace_model(module, inputs)
    torch.jit.save(traced, path)
    with torch.no_grad():
        warn_if_no_detections(module, traced(*inputs))
    return traced


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__




def script_model(model: nn.Module, fields: dict):
    """
    Detectron2's ``scripting`` export (``scripting_with_instances(model, fields)``), refused
    for models with DySample: its CPU path is one Python autograd Function and its grid cache
    a Python ``lru_cache``, which ``torch.jit.script`` cannot compile, and the FPN's top-down
    loop zips sliced ModuleLists. Making them scriptable would fork the module's code for a
    deprecated format; tracing records the same graph at every input size.

    Raises:
        ExportError: for models containing a DySample module.
    """
    from ..layers import DySample

    where = [name for name, m in model.named_modules() if isinstance(m, DySample)]
    if where:
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        raise ExportError(
            f"torch.jit.script (Detectron2's 'scripting' export) cannot compile DySample "
            f"({where[0]}{more}): its CPU sampling is a Python autograd Function and its grid "
            "cache a Python lru_cache. Export by tracing (--format torchscript or onnx: one "
            "trace runs at every input size) or with torch.export (--format export); "
            "TorchScript is deprecated in current torch."
        )
    from detectron2.export import scripting_with_instances

    return scripting_with_instances(model, fields)
