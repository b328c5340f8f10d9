"""DySample (ICCV 2023) upsampling in Detectron2's FPN."""
from .config import add_dysample_config
from .layers import DySample
from .modeling import (
    CarafeFPN,
    DySampleFPN,
    DySampleSemSegFPNHead,
    DySampleSimpleFeaturePyramid,
    MaskRCNNCarafeUpsampleHead,
    build_resnet_carafe_fpn_backbone,
    build_resnet_dysample_fpn_backbone,
    build_retinanet_resnet_dysample_fpn_backbone,
    to_carafe_fpn,
    to_dysample,
)

__version__ = "0.1.0"
