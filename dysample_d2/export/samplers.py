"""
Which bilinear sampling DySample exports with, and at which ONNX opsets.

"gridsample": ``F.grid_sample`` (ONNX GridSample, opset >= 16). "gather": the same
``align_corners=False``, border-padding bilinear written as gathers and arithmetic
(``dysample_d2.layers.gather``), for opsets 11-15 and runtimes without a usable GridSample.
"auto": gather below opset 16; from opset 16 the faster export for the runtime it targets
(:func:`resolve_sampler`'s ``runtime``; latency tables in docs/deployment.md): gathers for
onnxruntime; for OpenVINO gathers where it runs float32 by default on an AMD CPU, GridSample
at bf16 (the default on CPUs with bfloat16 units) and on Intel CPUs; GridSample otherwise
(one kernel in GPU runtimes). At bf16 and f16 both exports drift from float32 about as
nearest-FPN's does (:mod:`.precision`). The eager model a check compares with
runs in the same sampler (``with dysample_d2.layers.sampler(name):``), so both sides do the
same arithmetic.
"""
from ..layers import SAMPLERS
from .model import ExportError

__all__ = ["SAMPLERS", "GRIDSAMPLE_MIN_OPSET", "OPSETS", "resolve_sampler", "check_opset"]

GRIDSAMPLE_MIN_OPSET = 16
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


def resolve_sampler(name: str, opset=None, runtime=None) -> str:
    """
    "gridsample" or "gather" for `name` at ONNX `opset` (None: not ONNX), for the runtime
    the export is made for (None: any; see the module docstring for "auto").

    Raises:
        ExportError: unknown name, or GridSample below the opset that has it.
    """
    if name not in SAMPLERS:
        raise ExportError(f"sampler {name!r}: allowed are {', '.join(SAMPLERS)}")
    if name == "auto":
        if opset is not None and opset < GRIDSAMPLE_MIN_OPSET:
            return "gather"
        if opset is not None and runtime == "onnxruntime":
            return "gather"
        if opset is not None and runtime == "openvino" and _openvino_prefers_gather():
            return "gather"
        return "gridsample"
    if name == "gridsample" and opset is not None and opset < GRIDSAMPLE_MIN_OPSET:
        raise ExportError(
            f"ONNX opset {opset}: GridSample needs opset >= {GRIDSAMPLE_MIN_OPSET}; use the "
            "gather sampler (--sampler gather or auto) or a newer opset"
        )
    return name


def _openvino_prefers_gather() -> bool:
    """OpenVINO's CPU plugin on an AMD CPU whose default inference precision is f32 (at bf16
    the GridSample export is the faster)."""
    try:
        import openvino

        core = openvino.Core()
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # not installed, or no CPU plugin: the general choice
        return False
    return "AMD" in name.upper() and default == "f32"
