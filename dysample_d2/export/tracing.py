"""
TorchScript tracing, and the error reports every export format shares.

:func:`torch.jit.trace` records ``model.inference(..., do_postprocess=False)`` flattened by
Detectron2's :class:`~detectron2.export.TracingAdapter` (:func:`.tracing_adapter`, as
Detectron2's exporter does), or :class:`.BackboneExport`; DySample builds its sampling grid from
tensor shapes while tracing, so one trace runs at any input size. Parts that cannot be recorded
(e.g. Detectron2's deformable conv, a Python autograd function) raise :class:`ExportError`
naming the op and the module. ``torch.jit.script`` stops on DySample in one line
(``DySample.__prepare_scriptable__``).
"""
import contextlib
import re
import traceback
import warnings

import torch
from torch import nn

__all__ = ["ExportError", "trace_model", "quiet_tracing", "module_name", "failing_module",
           "first_line"]


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the part of the model and why."""


# Known-harmless messages while tracing/exporting: the tracer's view of Detectron2's shape
# and finiteness asserts (boxes.py, nms.py, fast_rcnn.py, ...), aten::index on indices from
# nonzero() (never negative) in the heads, and torch's deprecation notes on TorchScript.
_IGNORED = (r".*advanced indexing .* negative values", r".*legacy TorchScript-based ONNX",
            r".*is_fx_tracing", r"`torch\.jit\.\w+` is deprecated")


@contextlib.contextmanager
def quiet_tracing():
    """No autograd, and none of the known-harmless tracer and exporter warnings, inside."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"(detectron2|torch|torchvision)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        for message in _IGNORED:
            warnings.filterwarnings("ignore", message=message)
        yield


def module_name(scope: str) -> str:
    """A traced node's scope as a module name, e.g.
    '__module.model/__module.model.backbone.fpn_output2' -> 'backbone.fpn_output2'."""
    name = scope.split("/")[-1].replace("__module.", "", 1)
    return re.sub(r"^model\.?", "", name) or "(top level)"


def failing_module(exc: BaseException, root: nn.Module) -> str:
    """Name (and class) of the innermost module of `root` in the exception's traceback."""
    names = {id(m): n for n, m in root.named_modules()}
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if obj is not None and id(obj) in names:
            found = f"{module_name(names[id(obj)])} ({type(obj).__name__})"
    return found or f"(top level) ({type(root).__name__})"


def first_line(exc: BaseException) -> str:
    """The exception's first non-empty message line (at most 300 characters)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _check_python_ops(traced: torch.jit.ScriptModule) -> None:
    """Python autograd functions are kept as opaque calls: neither format can save them."""
    calls = {}
    for node in traced.inlined_graph.nodes():
        if node.kind() == "prim::PythonOp":
            calls.setdefault(node.pyname(), []).append(module_name(node.scopeName()))
    for op, where in calls.items():
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        raise ExportError(
            f"{where[0]}{more} call(s) the Python autograd function {op!r}, which cannot be "
            "exported: TorchScript cannot serialize Python calls and ONNX has no conversion "
            "for them. Use a config without this op."
        )


def trace_model(module: nn.Module, inputs) -> torch.jit.ScriptModule:
    """
    ``torch.jit.trace`` `module` (a TracingAdapter or BackboneExport) on `inputs` (a tuple),
    without the known-harmless tracer warnings. Save it with ``torch.jit.save``; trace a whole
    model on an image with detections, since a trace records only the branches taken.

    Raises:
        ExportError: naming the module where tracing failed or a Python op was traced.
    """
    try:
        with quiet_tracing():
            traced = torch.jit.trace(module, inputs, check_trace=False)
    except Exception as e:
        raise ExportError(
            f"tracing failed in {failing_module(e, module)}: {type(e).__name__}: "
            f"{first_line(e)}"
        ) from e
    _check_python_ops(traced)
    return traced
