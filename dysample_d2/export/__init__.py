"""
Export of DySample-FPN models: TorchScript (tracing), ONNX (TorchScript-based or
torch.export-based exporter, GridSample or gather sampling), torch.export programs, and the
runtimes that check them. One concept per module:

* :mod:`.model`: the model of a config, its backbone part, its flattened whole-model part;
* :mod:`.tracing`: torch.jit.trace, error reports, the refusal of torch.jit.script;
* :mod:`.samplers`: which bilinear sampling DySample exports with, at which opsets;
* :mod:`.onnx`: ONNX export;
* :mod:`.program`: torch.export with dynamic height and width;
* :mod:`.runtimes`: running a written export; :mod:`.compare`: its differences to eager.
"""
from .compare import max_abs_diffs, max_rel_diffs
from .model import BackboneExport, ExportError, load_model, pad_image, tracing_adapter
from .onnx import DYNAMO_OPSET, ONNX_OPSET, export_onnx, output_names
from .program import check_program_size, export_program
from .runtimes import CANNOT, RUNTIMES, check_runtime, load_runtime, runtime_for
from .samplers import GRIDSAMPLE_MIN_OPSET, SAMPLERS, check_opset, resolve_sampler
from .tracing import export_torchscript, script_model, trace_model

__all__ = [
    "ExportError", "load_model", "BackboneExport", "tracing_adapter", "pad_image",
    "trace_model", "export_torchscript", "script_model",
    "ONNX_OPSET", "DYNAMO_OPSET", "export_onnx", "output_names",
    "export_program", "check_program_size",
    "SAMPLERS", "GRIDSAMPLE_MIN_OPSET", "check_opset", "resolve_sampler",
    "RUNTIMES", "CANNOT", "check_runtime", "load_runtime", "runtime_for",
    "max_abs_diffs", "max_rel_diffs",
]
