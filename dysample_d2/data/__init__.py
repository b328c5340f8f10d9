"""Synthetic COCO-layout data for fast end-to-end runs with Detectron2's builtin dataset names."""

from .synthetic_check import DatasetValidationError, validate_coco_dir
from .synthetic_coco import generate_synthetic_coco

__all__ = ["generate_synthetic_coco", "validate_coco_dir", "DatasetValidationError"]
