"""
What an export can be asked for, checked before a model is built: the ONNX opsets each
exporter writes, and the sampler DySample exports with (:func:`export_sampler`).

Samplers (``dysample_d2.layers.sampler``): "gridsample" writes ONNX GridSample (opset >= 16);
"gather" the same ``align_corners=False``, border-padding bilinear as gathers and arithmetic
(``dysample_d2.layers.gather``), for opsets 11-15 and runtimes without a usable GridSample.
"auto" is the faster export for the runtime it targets (latency tables in docs/deployment.md).
The eager model a check compares with runs in the same sampler, so both sides do the same
arithmetic.
"""
from dysample_d2.export import ExportError
from dysample_d2.export.onnx import GRIDSAMPLE_MIN_OPSET
from dysample_d2.layers import SAMPLERS

__all__ = ["OPSETS", "check_opset", "export_sampler"]

# The opsets each ONNX exporter writes: the TorchScript-based one from 11 (Detectron2's
# STABLE_ONNX_OPSET_VERSION; torchvision's roi_align and nms need it) to its last, 20; the
# torch.export-based one from 18 (its op library's opset) to torch's newest.
OPSETS = {"torchscript": range(11, 21), "dynamo": range(18, 24)}
EXPORTER_NAMES = {"torchscript": "TorchScript-based", "dynamo": "torch.export-based"}


def check_opset(opset: int, exporter: str = "torchscript") -> None:
    """ExportError if `exporter` ("torchscript" or "dynamo") cannot write `opset`."""
    allowed = OPSETS[exporter]
    if opset not in allowed:
        raise ExportError(
            f"ONNX opset {opset} is outside {allowed.start}..{allowed.stop - 1}, the opsets "
            f"the {EXPORTER_NAMES[exporter]} ONNX exporter writes for these models"
        )


def export_sampler(name: str, opset=None, runtime=None) -> str:
    """
    The sampler ("gridsample" or "gather") to export with, for the sampler `name` asked for,
    at ONNX `opset` (None: not ONNX) and for `runtime` (None: any). "auto": gathers below
    opset 16; from opset 16 gathers for onnxruntime, and for OpenVINO where its CPU plugin runs
    on an AMD CPU whose default inference precision is f32 (at bf16, the default on CPUs with
    bfloat16 units, and on Intel CPUs the GridSample export is the faster); else GridSample
    (one kernel in GPU runtimes). Apply it with ``with dysample_d2.layers.sampler(...)``.

    Raises:
        ExportError: unknown name, or GridSample below the opset that has it.
    """
    if name not in SAMPLERS:
        raise ExportError(f"sampler {name!r}: allowed are {', '.join(SAMPLERS)}")
    if opset is not None and opset < GRIDSAMPLE_MIN_OPSET:
        if name == "gridsample":
            raise ExportError(
                f"ONNX opset {opset}: GridSample needs opset >= {GRIDSAMPLE_MIN_OPSET}; use the "
                "gather sampler (--sampler gather or auto) or a newer opset"
            )
        return "gather"
    if name != "auto":
        return name
    if opset is None or runtime not in ("onnxruntime", "openvino"):
        return "gridsample"
    if runtime == "onnxruntime":
        return "gather"
    try:
        import openvino

        core = openvino.Core()
        cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # not installed, or no CPU plugin: the general choice
        return "gridsample"
    return "gather" if "AMD" in cpu.upper() and default == "f32" else "gridsample"
