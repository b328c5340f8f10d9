"""
ViTDet's simple feature pyramid with DySample in its 2x and 4x upsampling steps.

Detectron2's :class:`SimpleFeaturePyramid` builds P2 and P3 from the ViT's stride-16
features with transposed convolutions (2x2, stride 2), which both upsample and halve the
channels:

    4x (P2): ConvTranspose2d(dim, dim/2), LayerNorm, GELU, ConvTranspose2d(dim/2, dim/4)
    2x (P3): ConvTranspose2d(dim, dim/2)

Here each ConvTranspose2d becomes a :class:`ReduceDySample`: the same channel reduction as
a learned 1x1 conv at the input resolution, then DySample (scale 2) at the reduced width.
The LayerNorm and GELU between the two 4x steps stay, and every module keeps its index in
the stage, so all state-dict names but the replaced steps' are SimpleFeaturePyramid's: a
ViTDet checkpoint loads with only ``simfp_2.0``, ``simfp_2.3`` and ``simfp_3.0`` differing.

Parameters per replaced step, lp style with g groups (``2 * g * 4`` offset channels):
    ConvTranspose2d(c, c/2):  2c^2 + c/2
    ReduceDySample(c, c/2):   c^2/2 + c/2  +  (c/2 * 8g + 8g)   [dyscope: + c/2 * 8g]
For ViT-B (dim 768, g 4) the three steps take 695,328 parameters (30,816 of them DySample's)
in place of the deconvolutions' 2,655,168.
"""
from detectron2.modeling import SimpleFeaturePyramid
from torch import nn

from ..layers import DySample

__all__ = ["DySampleSimpleFeaturePyramid", "ReduceDySample"]


class ReduceDySample(nn.Module):
    """A 1x1 conv from in_channels to out_channels, then DySample (scale 2) on its output."""

    def __init__(self, in_channels, out_channels, **dysample_options):
        super().__init__()
        self.upsample = DySample(out_channels, 2, **dysample_options)  # checks the args first
        self.reduce = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.upsample(self.reduce(x))


class DySampleSimpleFeaturePyramid(SimpleFeaturePyramid):
    """:class:`SimpleFeaturePyramid` whose upsampling steps are :class:`ReduceDySample`."""

    def __init__(
        self,
        net,
        in_feature,
        out_channels,
        scale_factors,
        top_block=None,
        norm="LN",
        square_pad=0,
        **dysample_options,
    ):
        """
        Args:
            net, in_feature, out_channels, scale_factors, top_block, norm, square_pad: as for
                :class:`detectron2.modeling.SimpleFeaturePyramid`.
            dysample_options: DySample's (style, groups, dyscope, scope_bias, as for
                :class:`DySample`), for every step; groups must divide each step's output
                channels (dim/2, and dim/4 for 4x).
        """
        dim = net.output_shape()[in_feature].channels
        # index in the stage of each ConvTranspose2d, as SimpleFeaturePyramid lays it out
        steps = {4.0: {0: (dim, dim // 2), 3: (dim // 2, dim // 4)}, 2.0: {0: (dim, dim // 2)}}
        replacements = [
            {i: ReduceDySample(c_in, c_out, **dysample_options) for i, (c_in, c_out) in
             steps.get(scale, {}).items()}
            for scale in scale_factors
        ]  # built first: bad DySample arguments fail before the pyramid is
        super().__init__(net, in_feature, out_channels, scale_factors, top_block=top_block,
                         norm=norm, square_pad=square_pad)
        for stage, replacement in zip(self.stages, replacements):
            for index, module in replacement.items():
                assert isinstance(stage[index], nn.ConvTranspose2d)
                stage[index] = module

    @staticmethod
    def upsampler_channels(dim, scale_factors):
        """Channels of the DySample modules for input features of ``dim`` channels."""
        channels = [dim // 2] if any(s in (2.0, 4.0) for s in scale_factors) else []
        return channels + ([dim // 4] if 4.0 in scale_factors else [])
