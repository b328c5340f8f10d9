"""Synthetic COCO- and ADE20K-layout data for fast end-to-end runs with Detectron2's builtin
dataset names."""

from .ade20k import generate_synthetic_ade20k, validate_ade20k_dir
from .check import DatasetValidationError, validate_coco_dir
from .coco import generate_synthetic_coco

__all__ = [
    "generate_synthetic_coco",
    "validate_coco_dir",
    "generate_synthetic_ade20k",
    "validate_ade20k_dir",
    "DatasetValidationError",
]
