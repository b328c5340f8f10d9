"""
Runtimes that run an export: load a written file as ``run(image) -> list of arrays``.

=============  ===============================  =========================================
runtime        formats                          package
=============  ===============================  =========================================
torch          torchscript (.ts), export (.pt2)  torch
onnxruntime    onnx                             ``pip install -e ".[deploy]"``
openvino       onnx, export                     ``pip install -e ".[deploy]"``
=============  ===============================  =========================================

OpenVINO compiles in float32 (``INFERENCE_PRECISION_HINT``): on CPUs with bfloat16 units its
default is bfloat16, whose features differ from float32 by about 1e-2 relative.
:data:`CANNOT` gives, for runtimes that cannot be installed beside this project's torch and
numpy, the reason.
"""
import importlib.util

import numpy as np
import torch

from .model import ExportError

__all__ = ["RUNTIMES", "CANNOT", "check_runtime", "load_runtime", "runtime_for"]

# runtime -> (formats, Python module)
RUNTIMES = {
    "torch": (("torchscript", "export"), "torch"),
    "onnxruntime": (("onnx",), "onnxruntime"),
    "openvino": (("onnx", "export"), "openvino"),
}
DEFAULT_RUNTIME = {"torchscript": "torch", "export": "torch", "onnx": "onnxruntime"}
CANNOT = {
    "executorch": (
        "ExecuTorch's release for this torch (1.5) requires numpy >= 2, and Detectron2 needs "
        "numpy < 2; the releases that accept numpy < 2 pin an older torch"
    ),
    "litert": (
        "the LiteRT runtime (ai-edge-litert) installs, but no converter does: litert-torch "
        "requires numpy >= 2, and onnx2tf installs TensorFlow with other onnx, onnxruntime "
        "and protobuf versions"
    ),
}


def runtime_for(fmt: str) -> str:
    """The runtime a format is checked in by default."""
    return DEFAULT_RUNTIME[fmt]


def check_runtime(name: str, fmt: str) -> None:
    """ExportError unless runtime `name` is installed and runs format `fmt`."""
    if name in CANNOT:
        raise ExportError(f"runtime {name} is not supported: {CANNOT[name]}")
    if name not in RUNTIMES:
        raise ExportError(f"runtime {name!r}: allowed are {', '.join(RUNTIMES)}")
    formats, module = RUNTIMES[name]
    if fmt not in formats:
        raise ExportError(f"runtime {name} does not run the {fmt} format (it runs: "
                          f"{', '.join(formats)})")
    if importlib.util.find_spec(module) is None:
        raise ExportError(f"runtime {name} is not installed: pip install -e '.[deploy]'")


def load_runtime(name: str, fmt: str, path: str, threads: int = 0):
    """
    Load the export at `path` in runtime `name` (checked with :func:`check_runtime`).

    Args:
        threads: intra-op threads (0: the runtime's default).

    Returns:
        run(image Tensor[3, H, W]) -> list of numpy arrays, the export's outputs.
    """
    check_runtime(name, fmt)
    if name == "onnxruntime":
        return _onnxruntime(path, threads)
    if name == "openvino":
        return _openvino(path, fmt, threads)
    module = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()

    def run(image):
        with torch.no_grad():
            return [o.numpy() for o in module(image)]

    return run


def _onnxruntime(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image.numpy()})


def _openvino(path, fmt, threads):
    import openvino

    core = openvino.Core()
    model = path if fmt == "onnx" else _openvino_model(openvino, path)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)

    def run(image):
        result = compiled([np.ascontiguousarray(image.numpy())])
        return [result[o] for o in compiled.outputs]

    return run


def _openvino_model(openvino, path):
    try:
        return openvino.convert_model(torch.export.load(path))
    except Exception as e:  # OpenVINO's frontend lists the ops it has no conversion for
        lines = [line.strip() for line in str(e).splitlines() if "No conversion rule" in line]
        why = lines[0] if lines else str(e).splitlines()[0]
        raise ExportError(f"OpenVINO cannot convert the torch.export program: {why}") from e
