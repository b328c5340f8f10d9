"""
How the scripts build and write an export: the model of a config file, TorchScript and ONNX
files with the checks the package leaves to its caller (the no-detections warning, DySample's
sampling nodes tagged for low precision), and Detectron2's scripting export.
"""
import warnings

import torch
from torch import nn

from dysample_d2.export import ExportError, export_onnx, trace_model
from dysample_d2.export.tracing import quiet_tracing

from .precision import tag_sampling_nodes

__all__ = ["ExportWarning", "load_model", "warn_if_no_detections", "write_torchscript",
           "write_onnx", "script_model"]

NO_DETECTIONS = ("no detections on the export input: the trace records the branches taken "
                 "without detections only; export on an image with objects (--input) to be "
                 "sure every branch is recorded")


class ExportWarning(UserWarning):
    """An export that was written but may not behave as the model does on other inputs."""


def load_model(config_file: str, weights=None, opts=()):
    """
    Build the model of a config file (+ command-line `opts`) in eval mode and load
    `weights` (default: MODEL.WEIGHTS; none: random init) strictly. CPU unless CUDA exists.

    Returns:
        (CfgNode, nn.Module)
    """
    from detectron2.modeling import build_model

    from tools.engine import load_exact_checkpoint, setup_config

    cfg = setup_config(config_file, opts)
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_exact_checkpoint(model, cfg.MODEL.WEIGHTS)
    return cfg, model


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


def write_torchscript(module: nn.Module, inputs, path: str) -> torch.jit.ScriptModule:
    """Trace `module` on `inputs` and save the trace to `path` (load with torch.jit.load);
    warns if a whole model finds no detections on `inputs` (:func:`warn_if_no_detections`)."""
    traced = trace_model(module, inputs)
    torch.jit.save(traced, path)
    with torch.no_grad():
        warn_if_no_detections(module, traced(*inputs))
    return traced


def write_onnx(module: nn.Module, image: torch.Tensor, path: str, opset: int = None,
               dynamo: bool = False) -> list:
    """
    ``dysample_d2.export.export_onnx`` (DySample sampling as the active
    ``dysample_d2.layers.sampler`` says); a trace of a whole model warns if it finds no
    detections on `image`, and its DySample sampling nodes are tagged so that low-precision
    runtimes keep them in float32 (:func:`.precision.tag_sampling_nodes`). Returns the output
    names.
    """
    if not dynamo:
        with quiet_tracing():
            outputs = module(image)
        warn_if_no_detections(module, outputs)
    names = export_onnx(module, image, path, opset=opset, dynamo=dynamo)
    if not dynamo:
        tag_sampling_nodes(path, module)
    return names


def script_model(model: nn.Module, fields: dict):
    """
    Detectron2's ``scripting`` export (``scripting_with_instances(model, fields)``), refused
    for models with DySample, naming them and the script's formats that work: its CPU path is
    one Python autograd Function and its grid cache a Python ``lru_cache``, which
    ``torch.jit.script`` cannot compile (``DySample.__prepare_scriptable__`` stops it in one
    line); tracing records the same graph at every input size.

    Raises:
        ExportError: for models containing a DySample module.
    """
    from dysample_d2.layers import DySample

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
