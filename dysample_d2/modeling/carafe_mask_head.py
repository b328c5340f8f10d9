"""Detectron2's Mask R-CNN mask head with CARAFE in place of its transposed convolution."""
from typing import Dict, List, Optional

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from ..config import upsampler_from_config
from ..layers.upsamplers import build_upsampler

__all__ = ["MaskRCNNCarafeUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNCarafeUpsampleHead(MaskRCNNConvUpsampleHead):
    """
    ``MaskRCNNConvUpsampleHead`` whose 2x upsampling is CARAFE (``upsample``), as mmdet's
    ``FCNMaskHead`` builds it with ``upsample_cfg=dict(type="carafe", ...)`` (mmdet's
    ``configs/carafe/mask-rcnn_r50_fpn-carafe_1x_coco.py``): the convs ``mask_fcn1..N``, CARAFE
    on their channels, then the 1x1 ``predictor``. ``FCNMaskHead`` applies its ReLU after a
    deconvolution only; after CARAFE, whose outputs are convex combinations of the ReLU
    outputs, it would change nothing.

    Parameter names: ``mask_fcn{k}``, ``upsample.channel_compressor``,
    ``upsample.content_encoder``, ``predictor``.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: List[int],
                 conv_norm="", carafe_options: Optional[Dict[str, int]] = None, **kwargs):
        """
        Args:
            input_shape, num_classes, conv_norm: as for ``MaskRCNNConvUpsampleHead``.
            conv_dims (list[int]): the output channels of the N convs, then of the upsampling,
                which CARAFE keeps: its last entry must equal the one before it (or the input
                channels when N is 0).
            carafe_options (dict): CARAFE's options (``up_kernel``, ``up_group``,
                ``encoder_kernel``, ``encoder_dilation``, ``compressed_channels``); default
                mmcv's ``CARAFEPack`` defaults, as mmdet's CARAFE configs set them.
        """
        super().__init__(input_shape, num_classes=num_classes, conv_dims=conv_dims,
                         conv_norm=conv_norm, **kwargs)
        channels = conv_dims[-2] if len(conv_dims) > 1 else input_shape.channels
        if conv_dims[-1] != channels:
            raise ValueError(f"MaskRCNNCarafeUpsampleHead: CARAFE keeps its {channels} input "
                             f"channels; conv_dims[-1] must be {channels}, got {conv_dims[-1]}")
        # nn.Sequential runs its modules in the order they were added: the convs, then CARAFE,
        # then Detectron2's predictor (on `channels`, as conv_dims[-1] equals it), re-added last
        predictor = self.predictor
        del self.deconv, self.deconv_relu, self.predictor
        self.upsample = build_upsampler("carafe", channels, 2, **(carafe_options or {}))
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["carafe_options"] = upsampler_from_config(cfg, "MODEL.ROI_MASK_HEAD")[1]
        return ret
