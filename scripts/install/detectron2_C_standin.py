"""
Stand-in for ``detectron2._C``, written by dysample-d2's installer.

This detectron2 was installed from upstream's Python sources without its compiled
extension (no C++/CUDA build was possible). Everything dysample-d2 needs works with
torch/torchvision alone. The environment report answers below; every compiled op
(deformable conv, rotated boxes, the fast COCOeval) raises an error that names the op.
"""
import torch

IS_STANDIN = True
_HINT = (
    "needs detectron2's compiled extension (detectron2._C), which this installation does "
    "not have: it was installed from upstream's Python sources by dysample-d2's installer. "
    "Build detectron2 from source (pip install 'git+https://github.com/facebookresearch/"
    "detectron2.git') to use it."
)


class MissingCompiledOpError(AttributeError, RuntimeError):
    """Raised for any op of detectron2's compiled extension."""


def get_compiler_version() -> str:
    return "none (detectron2._C stand-in, no compiled ops)"


def get_cuda_version() -> str:
    return "none (detectron2._C stand-in)"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOpError(f"detectron2._C.{name} {_HINT}")


# Ops that detectron2 calls as torch.ops.detectron2.<name>: defined so that a call says
# what is missing instead of "no such operator".
_TORCH_OPS = {
    "nms_rotated": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align_rotated_forward": (
        "(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio) -> Tensor"
    ),
    "roi_align_rotated_backward": (
        "(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int batch_size, int channels, int height, int width, "
        "int sampling_ratio) -> Tensor"
    ),
}


def _raiser(op_name):
    def raise_missing(*args, **kwargs):
        raise MissingCompiledOpError(f"torch.ops.detectron2.{op_name} {_HINT}")

    return raise_missing


def _define_torch_ops():
    if hasattr(torch.ops.detectron2, "nms_rotated"):
        return
    lib = torch.library.Library("detectron2", "DEF")
    for op_name, schema in _TORCH_OPS.items():
        lib.define(op_name + schema)
        lib.impl(op_name, _raiser(op_name), "CompositeExplicitAutograd")
    return lib


try:
    _LIBRARY = _define_torch_ops()
except RuntimeError:  # already defined by another import path; nothing to add
    _LIBRARY = None
