from .fpn import (
    DySampleFPN,
    build_resnet_dysample_fpn_backbone,
    build_retinanet_resnet_dysample_fpn_backbone,
)
from .lazy import to_dysample
from .semantic_seg import DySampleSemSegFPNHead
from .vitdet import DySampleSimpleFeaturePyramid
