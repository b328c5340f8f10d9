"""Detectron2's semantic FPN head with DySample in place of its bilinear 2x upsampling."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

from ..config import upsampler_from_config
from ..layers import UPSAMPLER_OPTIONS, DySample

__all__ = ["DySampleSemSegFPNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class DySampleSemSegFPNHead(SemSegFPNHead):
    """
    :class:`SemSegFPNHead` (the semantic FPN head of :paper:`PanopticFPN`, used by
    ``SemanticSegmentor`` and by Panoptic FPN's semantic branch) whose scale heads upsample
    each 2x step with a :class:`DySample` instead of bilinear interpolation.

    A scale head for a feature of stride 2^k * common_stride is k blocks of
    (3x3 conv + norm + ReLU, 2x upsample); each upsample becomes a DySample over the block's
    ``conv_dims`` channels, at the same index of the ``nn.Sequential``. So all of
    SemSegFPNHead's parameters keep their names (``p3.0.weight``, ``p3.0.norm.weight``, ...,
    ``predictor.weight``) and a semantic or Panoptic FPN checkpoint loads with only the
    DySample keys (``p3.1.*``, ``p4.1.*``, ``p4.3.*``, ...) missing. With p2..p5 and
    common_stride 4 there are 1 + 2 + 3 = 6 upsamplers. The final 4x upsampling of the
    class logits to the image stays bilinear, as in SemSegFPNHead.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dims: int,
        **kwargs,
    ):
        """
        Args:
            input_shape, conv_dims: as for :class:`SemSegFPNHead`.
            kwargs: :class:`SemSegFPNHead`'s other arguments, and DySample's (style, groups,
                dyscope, scope_bias, as for :class:`DySample`); every upsampler has
                ``conv_dims`` channels and scale 2.
        """
        dysample_options = {k: kwargs.pop(k) for k in UPSAMPLER_OPTIONS["dysample"] if k in kwargs}
        # input_shape by keyword: a lazy config passes a DictConfig, which configurable would
        # take for a cfg if it came first
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        for head in self.scale_heads:
            for index, op in enumerate(head):
                if isinstance(op, nn.Upsample):
                    head[index] = DySample(conv_dims, 2, **dysample_options)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        # validated before the parent builds anything
        _name, dysample_options = upsampler_from_config(cfg, "MODEL.SEM_SEG_HEAD")
        return {**super().from_config(cfg, input_shape), **dysample_options}
