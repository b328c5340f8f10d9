from .fpn import (
    DySampleFPN,
    build_resnet_dysample_fpn_backbone,
    build_retinanet_resnet_dysample_fpn_backbone,
)
from .semantic_seg import DySampleSemSegFPNHead

__all__ = [
    "DySampleFPN",
    "build_resnet_dysample_fpn_backbone",
    "build_retinanet_resnet_dysample_fpn_backbone",
    "DySampleSemSegFPNHead",
]
