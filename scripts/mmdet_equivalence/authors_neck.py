"""
mmdet side (runs in .venv-mmdet): the DySample authors' FPN_UPSAMPLE neck, written from their
published description (tiny-smart/detection-with-upsamplers) with the same module names,
tensor names, shapes and arithmetic, around their DySample module
(scripts/authors_dysample.py, the project's one copy of the authors' formulation).

``FPN_UPSAMPLE`` is mmdet's FPN whose top-down step i (lateral i+1 -> lateral i) calls
``self.upsample_modules[i]``; one module per step, so ``upsample_modules.0`` serves the
finest step.

The released R-CNN files have mmdet's ``FPN_CARAFE`` layout instead (their training logs), whose
upsamplers the authors' fork builds with its own ``build_upsampler``
(``FPN_CARAFE_Upsample`` in their ``mmdet/models/necks/fpn_carafe.py``): `use_authors_dysample`
puts their DySample into mmdet's own FPN_CARAFE the same way, one module per level pair.
"""
import importlib.util
import os

import torch.nn.functional as F
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import nn

# loaded from its file (scripts/authors_dysample.py): the mmdet environment has no Detectron2
_AUTHORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "authors_dysample.py")
_spec = importlib.util.spec_from_file_location("dysample_authors", _AUTHORS)
_authors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_authors)
AuthorsDySample = _authors.AuthorsDySample


def build_upsampler(cfg, in_channels, scale_factor):
    kind = cfg["type"]
    if kind == "nearest":
        return nn.Upsample(scale_factor=scale_factor, mode="nearest")
    if kind == "dysample":
        assert cfg.get("style", "lp") == "lp", "the paper's R-CNN models use style 'lp'"
        return AuthorsDySample(in_channels, scale_factor, style=cfg.get("style", "lp"),
                               groups=cfg.get("groups", 4), dyscope=cfg.get("dyscope", False),
                               scope_bias=cfg.get("scope_bias", False))
    raise NotImplementedError(kind)


@MODELS.register_module(force=True)
class FPN_UPSAMPLE(FPN):  # noqa: N801 (the authors' registry name)
    def __init__(self, *args, upsample_cfg=None, **kwargs):
        upsample_cfg = dict(upsample_cfg or dict(type="nearest", guided=False))
        assert not upsample_cfg.get("guided", False), "the paper's DySample is not guided"
        super().__init__(*args, **kwargs)
        assert not self.add_extra_convs, "R-CNN FPNs have no extra convs"
        self.upsample_modules = nn.ModuleList(
            build_upsampler(upsample_cfg, self.out_channels, 2)
            for _ in range(self.backbone_end_level - self.start_level - 1)
        )

    def forward(self, inputs):
        assert len(inputs) == len(self.in_channels)
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.upsample_modules[i - 1](laterals[i])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


def use_authors_dysample(neck, dyscope, scope_bias):
    """Replace every upsampler of mmdet's FPN_CARAFE ``neck`` (built with "nearest", which
    mmdet 3.3 accepts) by the authors' DySample ("lp", 4 groups), in place, before
    ``init_weights`` (FPN_CARAFE's xavier init then covers their convs, as the logs say)."""
    for index in range(len(neck.upsample_modules)):
        neck.upsample_modules[index] = AuthorsDySample(
            neck.out_channels, 2, style="lp", groups=4, dyscope=dyscope, scope_bias=scope_bias)
    neck.upsample = "dysample"  # FPN_CARAFE.forward only tests it against None
