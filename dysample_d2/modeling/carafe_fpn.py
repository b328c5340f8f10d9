"""
The FPN of mmdetection's ``FPN_CARAFE`` neck, the one the DySample authors trained their
COCO Faster and Mask R-CNN models with (their training logs print it as ``FPN_CARAFE`` /
``FPN_CARAFE_Upsample``), as a Detectron2 backbone.

It differs from Detectron2's FPN (and from :class:`DySampleFPN`) in its top of the pyramid and
in how levels are summed:

- P6 is not a max-pool of P5: a 3x3 stride-2 conv on the last input (C5) gives a sixth
  lateral, which starts the top-down pathway, and P6 is that lateral's 3x3 output conv;
- every level pair has an upsampler, P6 -> P5 included (four for res2..res5);
- each upsampler makes the full 2H x 2W map, which is cropped to the lateral's size before
  the sum (mmdet's ``slice_as``): at sizes that are not multiples of the coarsest stride the
  crop keeps the top-left part, it does not resample.
"""
import math

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ..config import upsampler_from_config
from ..layers import DySample, build_upsampler
from ..layers.carafe import CARAFE

__all__ = ["CarafeFPN", "build_resnet_carafe_fpn_backbone", "upsample_add"]


class CarafeFPN(Backbone):
    """
    FPN_CARAFE's pyramid on a bottom-up network: outputs "p{s}" for the stages s of
    ``in_features`` and one more (p2..p6 for res2..res5), strides 4..64.

    Parameters keep Detectron2's FPN names where the tensors are the same: ``fpn_lateral{s}``
    (1x1) and ``fpn_output{s}`` (3x3) per input stage; the extra level's 3x3 stride-2
    lateral is ``fpn_lateral{s+1}`` and its output conv ``fpn_output{s+1}``. The upsampler
    that takes level k to level k - 1 is ``fpn_upsample{k}`` (fpn_upsample3..6), as in
    :class:`DySampleFPN`. All convs and transposed convs, the upsamplers' included, start from
    mmcv's ``xavier_init(distribution="uniform")`` (zero biases), then CARAFE re-initializes
    its content encoder, as FPN_CARAFE.init_weights does (the DySample authors' logs:
    "Initialized by user-defined `init_weights` in FPN_CARAFE" for every neck weight).
    """

    def __init__(self, bottom_up, in_features, out_channels, norm="", upsampler="dysample",
                 **upsampler_options):
        """
        Args:
            bottom_up (Backbone): gives the ``in_features`` maps, strides doubling.
            in_features (list[str]): e.g. ["res2", "res3", "res4", "res5"].
            out_channels (int): channels of every output level.
            norm (str): as for Detectron2's FPN (a norm after each lateral and output conv;
                "" for none, as the authors' models).
            upsampler (str): one of :data:`dysample_d2.layers.UPSAMPLERS`, built by
                :func:`dysample_d2.layers.build_upsampler` for each top-down step.
            upsampler_options: that upsampler's options
                (:data:`dysample_d2.layers.UPSAMPLER_OPTIONS`), e.g. ``groups=8`` for
                "dysample", ``up_kernel=3`` for "carafe".
        """
        super().__init__()
        assert isinstance(bottom_up, Backbone)
        input_shapes = bottom_up.output_shape()
        strides = [input_shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"in_features {in_features} must have strides doubling, got {strides}")
        stages = [int(math.log2(s)) for s in strides] + [int(math.log2(strides[-1])) + 1]
        use_bias = norm == ""
        for index, stage in enumerate(stages):
            extra = index == len(in_features)  # the stride-2 lateral on the last input
            in_channels = input_shapes[in_features[min(index, len(in_features) - 1)]].channels
            lateral = Conv2d(in_channels, out_channels, kernel_size=3 if extra else 1,
                             stride=2 if extra else 1, padding=1 if extra else 0,
                             bias=use_bias, norm=get_norm(norm, out_channels))
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1,
                            bias=use_bias, norm=get_norm(norm, out_channels))
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            if index > 0:
                self.add_module(f"fpn_upsample{stage}",
                                build_upsampler(upsampler, out_channels, 2, **upsampler_options))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, CARAFE):
                module.init_weights()

        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.upsampler = upsampler
        self._stages = tuple(stages)
        self._out_features = [f"p{s}" for s in stages]
        self._out_feature_strides = {f"p{s}": 2**s for s in stages}
        self._out_feature_channels = {f: out_channels for f in self._out_features}

    # Looked up among the submodules by name: a replica (``nn.DataParallel``) shares this
    # module's Python attributes but has its own submodules.
    @property
    def lateral_convs(self):
        """The lateral conv of each level, finest first (``fpn_lateral{s}``)."""
        return [getattr(self, f"fpn_lateral{s}") for s in self._stages]

    @property
    def output_convs(self):
        """The output conv of each level, finest first (``fpn_output{s}``)."""
        return [getattr(self, f"fpn_output{s}") for s in self._stages]

    @property
    def upsamplers(self):
        """The upsampler onto each level but the coarsest, finest first (``fpn_upsample{s}``)."""
        return [getattr(self, f"fpn_upsample{s}") for s in self._stages[1:]]

    @property
    def size_divisibility(self):
        """The coarsest output stride (64 for p2..p6): the authors padded to it (Pad
        size_divisor=64 in their logs)."""
        return self._out_feature_strides[self._out_features[-1]]

    def forward(self, x):
        """
        Args:
            x (Tensor[B, 3, H, W]): images; any size works (each sum crops the upsampled map
                to the lateral), multiples of ``size_divisibility`` give uncropped sums.

        Returns:
            dict[str -> Tensor]: "p2".. "p6" feature maps.
        """
        features = self.bottom_up(x)
        inputs = [features[f] for f in self.in_features]
        inputs.append(inputs[-1])  # the extra lateral reads the last input again
        laterals = [conv(t) for conv, t in zip(self.lateral_convs, inputs)]
        upsamplers = self.upsamplers
        for index in range(len(laterals) - 1, 0, -1):  # coarsest pair first
            laterals[index - 1] = upsample_add(upsamplers[index - 1], laterals[index],
                                               laterals[index - 1])
        outputs = [conv(t) for conv, t in zip(self.output_convs, laterals)]
        return dict(zip(self._out_features, outputs))

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}


def upsample_add(upsampler: nn.Module, top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """
    ``lateral + upsampler(top)[..., :h, :w]`` (mmdet's ``tensor_add`` / ``slice_as``), with
    (h, w) the lateral's size, which must not exceed the upsampled map's.

    Where the sizes match exactly, DySample adds into the lateral as it samples (the same
    sum: its ``add_to`` at the full 2H x 2W size is the plain upsampling); a cropped sum
    upsamples to 2H x 2W first, since DySample's own ``size=`` would resample instead.
    """
    h, w = lateral.shape[-2:]
    full = (2 * top.shape[-2], 2 * top.shape[-1])
    if h > full[0] or w > full[1]:
        raise ValueError(f"lateral {tuple(lateral.shape[-2:])} is larger than the 2x upsampled "
                         f"map {full}")
    if isinstance(upsampler, DySample) and (h, w) == full:
        return upsampler(top, add_to=lateral)
    return lateral + upsampler(top)[..., :h, :w]


@BACKBONE_REGISTRY.register()
def build_resnet_carafe_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet + the CARAFE-layout FPN (:class:`CarafeFPN`): MODEL.FPN.IN_FEATURES, OUT_CHANNELS,
    NORM, UPSAMPLER and that upsampler's options (MODEL.FPN.DYSAMPLE.*, MODEL.FPN.CARAFE.*,
    MODEL.FPN.UPSAMPLE_KERNEL).
    """
    upsampler, options = upsampler_from_config(cfg)  # validate before building anything
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return CarafeFPN(bottom_up, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS,
                     norm=cfg.MODEL.FPN.NORM, upsampler=upsampler, **options)
