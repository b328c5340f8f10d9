"""
The deployment tooling of scripts/export_model.py, precision_check.py, benchmark_deploy.py and
visualize_sampling.py, on top of ``dysample_d2.export``:

* :mod:`.formats`: the ONNX opsets each exporter writes, the sampler DySample exports with;
* :mod:`.writing`: the model of a config file, TorchScript and ONNX files as the scripts write
  them, Detectron2's scripting export;
* :mod:`.runtimes`: running a written export, and its differences to eager;
* :mod:`.precision`: bf16 / f16 inference with DySample's sampling kept in float32.
"""
from .formats import OPSETS, check_opset, export_sampler
from .precision import (PRECISIONS, SAMPLING_TAG, float16_onnx, openvino_model, sampling_nodes,
                        tag_sampling_nodes)
from .runtimes import (CANNOT, RUNTIMES, check_runtime, compiled_precision, load_runtime,
                       max_abs_diffs, max_rel_diffs, runtime_for)
from .writing import (ExportWarning, load_model, script_model, warn_if_no_detections,
                      write_onnx, write_torchscript)

__all__ = [
    "OPSETS", "check_opset", "export_sampler",
    "ExportWarning", "load_model", "warn_if_no_detections", "write_torchscript", "write_onnx",
    "script_model",
    "RUNTIMES", "CANNOT", "check_runtime", "load_runtime", "runtime_for", "compiled_precision",
    "max_abs_diffs", "max_rel_diffs",
    "PRECISIONS", "SAMPLING_TAG", "tag_sampling_nodes", "sampling_nodes", "openvino_model",
    "float16_onnx",
]
