"""
Runtimes that run an export: load a written file as ``run(image) -> list of arrays``, and
compare its outputs with the eager model's (:func:`max_abs_diffs`, :func:`max_rel_diffs`).

=============  ===============================  =========================================
runtime        formats                          package
=============  ===============================  =========================================
torch          torchscript (.ts), export (.pt2)  torch
onnxruntime    onnx                             ``pip install -e ".[deploy]"``
openvino       onnx, export                     ``pip install -e ".[deploy]"``
=============  ===============================  =========================================

``precision`` (:data:`.precision.PRECISIONS`): OpenVINO compiles in float32
by default here (``INFERENCE_PRECISION_HINT``; on CPUs with bfloat16 units OpenVINO's own
default is bfloat16, "default" takes it), or bf16 / f16 with DySample's sampling nodes kept in
float32 (:mod:`.precision`); onnxruntime runs the file (f32) or its float16 conversion (f16).
:data:`CANNOT` gives, for runtimes that cannot be installed beside this project's torch and
numpy, the reason.
"""
import importlib.util
import os
import tempfile

import numpy as np
import torch

from dysample_d2.export import ExportError

from .precision import PRECISIONS, float16_onnx, openvino_model

__all__ = ["RUNTIMES", "CANNOT", "check_runtime", "load_runtime", "runtime_for",
           "compiled_precision", "max_abs_diffs", "max_rel_diffs"]

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


def load_runtime(name: str, fmt: str, path: str, threads: int = 0, precision: str = "f32",
                 keep_sampling_f32: bool = True):
    """
    Load the export at `path` in runtime `name` (checked with :func:`check_runtime`).

    Args:
        threads: intra-op threads (0: the runtime's default).
        precision: inference precision, one of ``PRECISIONS[name]`` ("f32" for torch).
        keep_sampling_f32: at bf16 / f16, keep DySample's tagged sampling nodes in float32
            (OpenVINO: :func:`openvino_model`; onnxruntime: :func:`float16_onnx`).

    Returns:
        run(image Tensor[3, H, W]) -> list of numpy arrays, the export's outputs.
    """
    check_runtime(name, fmt)
    allowed = PRECISIONS.get(name, ("f32",))
    if precision not in allowed:
        raise ExportError(f"runtime {name} has no precision {precision!r} (allowed: "
                          f"{', '.join(allowed)})")
    if name == "onnxruntime":
        return _onnxruntime(path, threads, precision, keep_sampling_f32)
    if name == "openvino":
        return _openvino(path, fmt, threads, precision, keep_sampling_f32)
    module = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()

    def run(image):
        with torch.no_grad():
            return [o.numpy() for o in module(image)]

    return run


def _onnxruntime(path, threads, precision, keep_sampling_f32):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    if precision == "f16":
        with tempfile.TemporaryDirectory() as directory:
            converted = float16_onnx(path, os.path.join(directory, "model_fp16.onnx"),
                                     keep_sampling_f32)
            session = onnxruntime.InferenceSession(converted, options,
                                                   providers=["CPUExecutionProvider"])
    else:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image.numpy()})


def _openvino(path, fmt, threads, precision, keep_sampling_f32):
    import openvino

    core = openvino.Core()
    if fmt == "onnx":
        model = openvino_model(path, keep_sampling_f32 and precision != "f32")
    else:
        model = _openvino_model(openvino, path)
    config = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)

    def run(image):
        result = compiled([np.ascontiguousarray(image.numpy())])
        return [result[o] for o in compiled.outputs]

    run.compiled = compiled  # for compiled_precision
    return run


def compiled_precision(run) -> str:
    """The inference precision an OpenVINO `run` (from :func:`load_runtime`) was compiled
    at, e.g. "bf16" where "f16" was asked on a CPU without float16 arithmetic; else None."""
    compiled = getattr(run, "compiled", None)
    if compiled is None:
        return None
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def _openvino_model(openvino, path):
    try:
        return openvino.convert_model(torch.export.load(path))
    except Exception as e:  # OpenVINO's frontend lists the ops it has no conversion for
        lines = [line.strip() for line in str(e).splitlines() if "No conversion rule" in line]
        why = lines[0] if lines else str(e).splitlines()[0]
        raise ExportError(f"OpenVINO cannot convert the torch.export program: {why}; run the "
                          "export written as ONNX (--format onnx --dynamo)") from e


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


def max_rel_diffs(expected, actual) -> dict:
    """{i: max |expected[i] - actual[i]| / max |expected[i]|}: feature errors on their scale."""
    diffs = max_abs_diffs(expected, actual)
    return {i: d / max(expected[i].abs().max().item(), 1e-12) if expected[i].numel() else 0.0
            for i, d in diffs.items()}
