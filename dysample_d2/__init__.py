"""DySample (ICCV 2023) upsampling in Detectron2's FPN."""
from .config import add_dysample_config
from .env import has_compiled_ops
from .layers import DySample
from .modeling import (
    DySampleFPN,
    build_resnet_dysample_fpn_backbone,
    build_retinanet_resnet_dysample_fpn_backbone,
)
from .modeling import DySampleSemSegFPNHead
from .modeling import DySampleSimpleFeaturePyramid, dysample_fpn, dysample_simple_feature_pyramid

__version__ = "0.1.0"

has_compiled_ops()  # imports detectron2._C once: a stand-in defines its missing ops

__all__ = [
    "add_dysample_config",
    "has_compiled_ops",
    "DySample",
    "DySampleFPN",
    "build_resnet_dysample_fpn_backbone",
    "build_retinanet_resnet_dysample_fpn_backbone",
    "DySampleSemSegFPNHead",
    "DySampleSimpleFeaturePyramid",
    "dysample_fpn",
    "dysample_simple_feature_pyramid",
]
