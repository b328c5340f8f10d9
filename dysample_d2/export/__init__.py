"""
Export of DySample-FPN models: TorchScript (tracing), ONNX (TorchScript-based or
torch.export-based exporter, GridSample or gather sampling), torch.export programs, and the
runtimes that check them. One concept per module:

* :mod:`.model`: the model of a config, its backbone part, its flattened whole-model part;
* :mod:`.tracing`: torch.jit.trace, error reports, the refusal of torch.jit.script;
* :mod:`.samplers`: which bilinear sampling DySample exports with, at which opsets;
* :mod:`.onnx`: ONNX export;
* :mod:`.program`: torch.export with dynamic height and width;
* :mod:`.runtimes`: running a written export; :mod:`.compare`: its differences to eager;
* :mod:`.precision`: bf16 / f16 inference with DySample's sampling kept in float32.
"""
from .compare import max_abs_diffs, max_rel_diffs
from .model import BackboneExport, ExportError, load_model, pad_image, tracing_adapter
from .onnx import DYNAMO_OPSET, ONNX_OPSET, export_onnx, output_names
from .precision import (PRECISIONS, SAMPLING_TAG, float16_onnx, openvino_model,
                        sampling_nodes, tag_sampling_nodes)
from .program import check_program_size, export_program
from .runtimes import (CANNOT, RUNTIMES, check_runtime, compiled_precision, load_runtime,
                       runtime_for)
from .samplers import GRIDSAMPLE_MIN_OPSET, SAMPLERS, check_opset, resolve_sampler
from .tracing import (ExportWarning, export_torchscript, script_model, trace_model,
                      warn_if_no_detections)

__all__ = [
    "ExportError", "load_model", "BackboneExport", "tracing_adapter", "pad_image",
    "trace_model", "export_torchscript", "script_model", "ExportWarning", "warn_if_no_detections",
    "ONNX_OPSET", "DYNAMO_OPSET", "export_onnx", "output_names",
    "export_program", "check_program_size",
    "SAMPLERS", "GRIDSAMPLE_MIN_OPSET", "check_opset", "resolve_sampler",
    "RUNTIMES", "CANNOT", "check_runtime", "load_runtime", "runtime_for", "compiled_precision",
    "PRECISIONS", "SAMPLING_TAG", "tag_sampling_nodes", "sampling_nodes", "openvino_model",
    "float16_onnx",
    "max_abs_diffs", "max_rel_diffs",
]
