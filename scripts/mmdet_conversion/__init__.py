"""Checkpoint conversion from other frameworks (mmdetection) to this project's models."""
from .rules import (
    ConversionError,
    ConversionReport,
    convert_state_dict,
    detect_task,
    rename_mmdet_key,
    reorder_semantic_classes,
)
from .checkpoints import (
    MMDET_PIXEL_MEAN,
    MMDET_PIXEL_STD,
    RELEASED_CHECKPOINTS,
    TASKS,
    check_mmdet_recipe,
    config_for_checkpoint,
    convert_checkpoint,
    load_mmdet_checkpoint,
    save_checkpoint,
    task_of_config,
)

__all__ = [
    "ConversionError",
    "ConversionReport",
    "convert_state_dict",
    "detect_task",
    "rename_mmdet_key",
    "reorder_semantic_classes",
    "MMDET_PIXEL_MEAN",
    "MMDET_PIXEL_STD",
    "RELEASED_CHECKPOINTS",
    "TASKS",
    "check_mmdet_recipe",
    "config_for_checkpoint",
    "convert_checkpoint",
    "load_mmdet_checkpoint",
    "save_checkpoint",
    "task_of_config",
]
