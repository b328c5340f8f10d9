from .fpn import (
    DySampleFPN,
    build_resnet_dysample_fpn_backbone,
    build_retinanet_resnet_dysample_fpn_backbone,
)
from .semantic_seg import DySampleSemSegFPNHead
from .lazy import dysample_fpn, dysample_simple_feature_pyramid
from .vitdet import DySampleSimpleFeaturePyramid

__all__ = [
    "DySampleFPN",
    "build_resnet_dysample_fpn_backbone",
    "build_retinanet_resnet_dysample_fpn_backbone",
    "DySampleSemSegFPNHead",
    "DySampleSimpleFeaturePyramid",
    "dysample_fpn",
    "dysample_simple_feature_pyramid",
]
