import math

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import upsampler_from_config
from ..layers import build_upsampler
from .carafe_fpn import upsample_add

__all__ = [
    "DySampleFPN",
    "build_resnet_dysample_fpn_backbone",
    "build_retinanet_resnet_dysample_fpn_backbone",
]


class DySampleFPN(FPN):
    """
    Detectron2's :class:`FPN` whose top-down pathway upsamples with one :class:`DySample`
    per step instead of nearest interpolation, or with any other of
    :data:`dysample_d2.layers.UPSAMPLERS` (``upsampler``): "nearest" is Detectron2's FPN
    exactly; the others add ``upsampler(top)[..., :h, :w]`` to the (h x w) lateral.

    All of FPN's parameters keep their names (``fpn_lateral{k}``, ``fpn_output{k}``, ...),
    so a nearest-FPN checkpoint loads into it. The upsampler that takes level k to level
    k - 1 is ``fpn_upsample{k}``: with in_features res2..res5 that is fpn_upsample5,
    fpn_upsample4 and fpn_upsample3.
    """

    def __init__(
        self,
        bottom_up,
        in_features,
        out_channels,
        norm="",
        top_block=None,
        fuse_type="sum",
        square_pad=0,
        *,
        upsampler="dysample",
        **upsampler_options,
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, top_block, fuse_type, square_pad: as
                for :class:`detectron2.modeling.FPN` (the same names, so a lazy config's
                ``L(FPN)(...)`` node becomes a DySample-FPN by its target alone).
            upsampler (str): one of :data:`dysample_d2.layers.UPSAMPLERS`, built by
                :func:`dysample_d2.layers.build_upsampler` with the FPN's out_channels and
                scale 2 for each top-down step.
            upsampler_options: that upsampler's options
                (:data:`dysample_d2.layers.UPSAMPLER_OPTIONS`), e.g. ``groups=8`` for
                "dysample" (style, groups, dyscope, scope_bias, as for :class:`DySample`),
                ``up_kernel=3`` for "carafe". Bad values raise ValueError (argument name and
                allowed values) before the FPN is built.
        """
        input_shapes = bottom_up.output_shape()
        # Top-down order, as self.lateral_convs: coarsest level first, finest last.
        stages = [int(math.log2(input_shapes[f].stride)) for f in reversed(in_features)]
        upsamplers = [build_upsampler(upsampler, out_channels, 2, **upsampler_options)
                      for _ in stages[:-1]]
        super().__init__(bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
                         fuse_type=fuse_type, square_pad=square_pad)
        for stage, module in zip(stages, upsamplers):
            self.add_module(f"fpn_upsample{stage}", module)
        self._top_down_stages = tuple(stages)
        self.upsampler = upsampler  # "dysample": each step calls fpn_upsample{k}(x, add_to=)

    # not compiled by torch.jit.script (its names are built at run time)
    __jit_unused_properties__ = ["upsamplers"]

    def __prepare_scriptable__(self):
        """torch.jit.script (and Detectron2's ``scripting_with_instances``) calls this on every
        submodule first: stop there in one line, since the top-down step looks its modules up
        by name and DySample's CPU kernel is an autograd Function."""
        raise RuntimeError(
            "DySampleFPN cannot be compiled by torch.jit.script: export it with "
            "torch.jit.trace (Detectron2's TracingAdapter) or torch.export instead")

    @property
    def upsamplers(self):
        """The upsampler of each top-down step, coarsest first (``fpn_upsample{k}``)."""
        return [getattr(self, f"fpn_upsample{k}") for k in self._top_down_stages[:-1]]

    def _top_down_modules(self):
        """
        (lateral conv, output conv, upsampler or None) of each level, coarsest first, looked
        up among the submodules by name: a replica (``nn.DataParallel``) shares this
        module's Python attributes, and so FPN's lists of the original convs, but has its own
        submodules.
        """
        stages = self._top_down_stages
        return [(getattr(self, f"fpn_lateral{k}"), getattr(self, f"fpn_output{k}"),
                 getattr(self, f"fpn_upsample{stages[index - 1]}") if index else None)
                for index, k in enumerate(stages)]

    def forward(self, x):
        """
        Args:
            x (Tensor[B, 3, H, W]): images, H and W divisible by ``size_divisibility``.

        Returns:
            dict[str -> Tensor]: "p2".. feature maps, as :meth:`FPN.forward`.
        """
        bottom_up_features = self.bottom_up(x)
        (lateral_conv, output_conv, _), *steps = self._top_down_modules()
        prev_features = lateral_conv(bottom_up_features[self.in_features[-1]])
        results = [output_conv(prev_features)]
        for idx, (lateral_conv, output_conv, upsampler) in enumerate(steps, start=1):
            lateral_features = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])
            if self.upsampler == "dysample":
                # lateral_features + upsample(prev_features), summed in place (nothing else
                # uses the lateral output); the CPU kernel adds as it samples
                prev_features = upsampler(prev_features, add_to=lateral_features)
            else:
                prev_features = upsample_add(upsampler, prev_features, lateral_features)
            if self._fuse_type == "avg":
                prev_features = prev_features / 2
            results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))


def _build_dysample_fpn(cfg, input_shape: ShapeSpec, top_block_fn):
    upsampler, options = upsampler_from_config(cfg)  # validate before building anything
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return DySampleFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block_fn(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        upsampler=upsampler,
        **options,
    )


@BACKBONE_REGISTRY.register()
def build_resnet_dysample_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + DySample-FPN with a max-pooled P6, as ``build_resnet_fpn_backbone``; the
    top-down upsampler from MODEL.FPN.UPSAMPLER (default "dysample", MODEL.FPN.DYSAMPLE.*)."""
    return _build_dysample_fpn(cfg, input_shape, lambda bottom_up: LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_dysample_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + DySample-FPN with P6/P7 from res5, as ``build_retinanet_resnet_fpn_backbone``."""

    def top_block(bottom_up):
        in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
        return LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS)

    return _build_dysample_fpn(cfg, input_shape, top_block)
