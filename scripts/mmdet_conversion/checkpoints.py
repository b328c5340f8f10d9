"""Read mmdet checkpoints, check the target config, write Detectron2 checkpoints."""
import os
import pickle
import re
from typing import Dict, Optional, Tuple

import torch

from .rules import ConversionError, ConversionReport, convert_state_dict, detect_task

__all__ = [
    "MMDET_PIXEL_MEAN", "MMDET_PIXEL_STD", "RELEASED_CHECKPOINTS", "TASKS",
    "load_mmdet_checkpoint", "check_mmdet_recipe", "task_of_config", "convert_checkpoint",
    "config_for_checkpoint", "save_checkpoint",
]

# mmdet's FCNMaskHead with a CARAFE upsample (upsample_cfg type "carafe") has these tensors
CARAFE_MASK_HEAD = "roi_head.mask_head.upsample.channel_compressor."
MMDET_PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, mmdet's (torchvision's) ImageNet statistics
MMDET_PIXEL_STD = (58.395, 57.12, 57.375)
TASKS = ("det", "mask", "panoptic")

# The authors' released checkpoints (tiny-smart/dysample README) -> configs/mmdet-recipe/ file.
# The R-CNN files have the FPN_CARAFE layout (the authors' training logs print the neck: a
# stride-2 P6 lateral, four upsamplers), built by build_resnet_carafe_fpn_backbone; the
# Panoptic FPN files the FPN_UPSAMPLE layout (three upsamplers: the authors' panoptic configs).
RELEASED_CHECKPOINTS = {
    "faster_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth":
        "faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml",
    "faster_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth":
        "faster_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml",
    "faster_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth":
        "faster_rcnn_R_101_DySamplePlus_CarafeFPN_1x_mmdet.yaml",
    "mask_rcnn_r50_fpn_dysample-lpg4_1x_coco.pth": "mask_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml",
    "mask_rcnn_r50_fpn_dysample-lpg4ds_1x_coco.pth":
        "mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml",
    "mask_rcnn_r101_fpn_dysample-lpg4ds_1x_coco.pth":
        "mask_rcnn_R_101_DySamplePlus_CarafeFPN_1x_mmdet.yaml",
    "panoptic_fpn_r50_fpn_dysample-lpg4_1x_coco.pth": "panoptic_fpn_R_50_DySample_1x_mmdet.yaml",
    "panoptic_fpn_r50_fpn_dysample-lpg4ds_1x_coco.pth":
        "panoptic_fpn_R_50_DySamplePlus_1x_mmdet.yaml",
    "panoptic_fpn_r101_fpn_dysample-lpg4ds_1x_coco.pth":
        "panoptic_fpn_R_101_DySamplePlus_1x_mmdet.yaml",
    # mmdet's own model zoo (configs/carafe/metafile.yml): FPN_CARAFE with CARAFE upsamplers
    "faster_rcnn_r50_fpn_carafe_1x_coco_bbox_mAP-0.386_20200504_175733-385a75b7.pth":
        "faster_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml",
    "mask_rcnn_r50_fpn_carafe_1x_coco_bbox_mAP-0.393__segm_mAP-0.358_20200503_135957-8687f195.pth":
        "mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml",
}


class _Placeholder:
    """Stands for any object of a class outside torch/numpy in a checkpoint (never executed)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    """mmengine checkpoints pickle mmengine objects (message hub, ...) beside the weights:
    load tensors and plain data, replace every other class by an inert placeholder."""

    _ALLOWED = ("torch", "collections", "numpy", "_codecs")
    _BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "range", "tuple", "list",
                 "dict", "int", "float", "str", "bytes", "bool"}

    def find_class(self, module, name):
        if module.split(".")[0] in self._ALLOWED:
            return super().find_class(module, name)
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        return _Placeholder


class _TolerantPickle:
    Unpickler = _TolerantUnpickler
    load = staticmethod(lambda f, **kw: _TolerantUnpickler(f, **kw).load())
    __name__ = "tolerant_pickle"


def load_mmdet_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmdet 2.x / 3.x checkpoint file (or a bare state dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmdet checkpoint {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = torch.load(path, map_location="cpu", weights_only=False,
                         pickle_module=_TolerantPickle)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: not a checkpoint dict but {type(obj).__name__}")
    if "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise ConversionError(
            f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(obj)[:10]}); "
            "is it an mmdet checkpoint?")
    return dict(state), meta if isinstance(meta, dict) else {}


def task_of_config(cfg) -> str:
    if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
        return "panoptic"
    return "mask" if cfg.MODEL.MASK_ON else "det"


def check_mmdet_recipe(cfg) -> list:
    """What in ``cfg`` differs from how mmdet runs its (pytorch-style) ResNet R-CNNs: such a
    config would load the converted tensors and compute something else."""
    problems = []
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1 is True; mmdet's ResNet (style='pytorch') "
                        "strides in the 3x3 conv: set it False")
    if cfg.INPUT.FORMAT != "RGB":
        problems.append(f"INPUT.FORMAT is {cfg.INPUT.FORMAT!r}; mmdet models read RGB")
    for name, want in (("PIXEL_MEAN", MMDET_PIXEL_MEAN), ("PIXEL_STD", MMDET_PIXEL_STD)):
        got = tuple(float(v) for v in getattr(cfg.MODEL, name))
        if len(got) != 3 or any(abs(a - b) > 1e-6 for a, b in zip(got, want)):
            problems.append(f"MODEL.{name} is {list(got)}; mmdet's is {list(want)}")
    if cfg.MODEL.RESNETS.NORM != "FrozenBN":
        problems.append(f"MODEL.RESNETS.NORM is {cfg.MODEL.RESNETS.NORM!r}; mmdet's frozen "
                        "BatchNorm is FrozenBN")
    return problems


def config_for_checkpoint(path: str) -> Optional[str]:
    """The packaged mmdet-recipe/ config for one of the authors' released file names, else None."""
    from dysample_d2.model_zoo import get_config_file

    name = RELEASED_CHECKPOINTS.get(os.path.basename(path))
    return get_config_file(f"mmdet-recipe/{name}") if name else None


def _meta_config_text(meta: dict) -> str:
    text = meta.get("cfg") or meta.get("config") or ""
    return text if isinstance(text, str) else ""


def convert_checkpoint(in_path: str, cfg, task: Optional[str] = None, reference=None
                       ) -> Tuple[dict, ConversionReport]:
    """
    Convert ``in_path`` for the model ``cfg`` builds, checking it covers that model exactly.
    ``reference``: that model's state dict when the caller has it (else it is built, on CPU).

    Returns:
        (checkpoint dict for Detectron2's checkpointer, report)
    """
    from detectron2.modeling import build_model

    state, meta = load_mmdet_checkpoint(in_path)
    problems = check_mmdet_recipe(cfg)
    if re.search(r"style\s*=\s*['\"]caffe['\"]", _meta_config_text(meta)):
        problems.append("the checkpoint's config has a caffe-style ResNet (BGR, stride in 1x1): "
                        "not the recipe the mmdet-recipe configs describe")
    config_task = task_of_config(cfg)
    ckpt_task = detect_task(k[len("module."):] if k.startswith("module.") else k for k in state)
    if task is not None and task not in TASKS:
        problems.append(f"--task {task!r} is not one of {TASKS}")
    elif task is not None and task != config_task:
        problems.append(f"--task {task} but the config builds a {config_task} model")
    carafe_mask_head = any(k.startswith(CARAFE_MASK_HEAD) for k in state)
    if carafe_mask_head != (cfg.MODEL.ROI_MASK_HEAD.NAME == "MaskRCNNCarafeUpsampleHead") and (
            config_task == ckpt_task == "mask"):
        problems.append(
            "the checkpoint's mask head upsamples with "
            + ("CARAFE (roi_head.mask_head.upsample.channel_compressor / content_encoder)"
               if carafe_mask_head else "a transposed conv (roi_head.mask_head.upsample)")
            + f", the config's MODEL.ROI_MASK_HEAD.NAME {cfg.MODEL.ROI_MASK_HEAD.NAME} with "
            + ("a transposed conv: set MODEL.ROI_MASK_HEAD.NAME MaskRCNNCarafeUpsampleHead"
               if carafe_mask_head else "CARAFE: set MODEL.ROI_MASK_HEAD.NAME "
               "MaskRCNNConvUpsampleHead"))
    if ckpt_task != config_task:
        problems.append(f"the checkpoint holds a {ckpt_task} model, the config builds a "
                        f"{config_task} model")
    if problems:
        raise ConversionError("cannot convert:\n  " + "\n  ".join(problems))

    if reference is None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        reference = build_model(cfg).state_dict()
    converted, report = convert_state_dict(state, reference, cfg.MODEL.FPN.IN_FEATURES)
    source = {"file": os.path.basename(in_path)}
    for key in ("mmdet_version", "mmengine_version", "mmcv_version", "epoch", "iter"):
        if key in meta and isinstance(meta[key], (str, int)):
            source[key] = str(meta[key])
    checkpoint = {
        "model": converted,
        "__author__": "dysample-d2 mmdet converter",
        "matching_heuristics": False,
        "mmdet_source": source,
    }
    return checkpoint, report


def save_checkpoint(checkpoint: dict, out_path: str) -> None:
    """Write atomically: an interrupted save leaves no truncated file at ``out_path``."""
    from tools.engine import AtomicFile  # the repository root is on sys.path

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with AtomicFile(out_path, "wb") as f:
        torch.save(checkpoint, f)
