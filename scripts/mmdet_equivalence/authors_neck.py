"""
mmdet side (runs in .venv-mmdet): the DySample authors' FPN_UPSAMPLE neck and DySample module,
written from their published description (tiny-smart/detection-with-upsamplers,
tiny-smart/dysample) with the same module names, tensor names, shapes and arithmetic:

- ``FPN_UPSAMPLE`` is mmdet's FPN whose top-down step i (lateral i+1 -> lateral i) calls
  ``self.upsample_modules[i]``; one module per step, so ``upsample_modules.0`` serves the
  finest step.
- ``DySample``: ``offset`` 1x1 conv (2 * groups * s^2 outputs for style 'lp'), optional
  ``scope`` 1x1 conv (DySample+; ``scope_bias`` selects the earlier release's biased conv),
  buffer ``init_pos``; offsets are ``offset(x) * 0.25`` (or ``* sigmoid(scope(x)) * 0.5``)
  plus init_pos, added to pixel centres, normalised, pixel-shuffled to the output grid and
  read with grid_sample (bilinear, align_corners=False, border padding).
"""
import torch
import torch.nn.functional as F
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import nn


class AuthorsDySample(nn.Module):
    def __init__(self, in_channels, scale_factor=2, style="lp", groups=4, dyscope=False,
                 scope_bias=False):
        super().__init__()
        assert style == "lp", "the paper's R-CNN models use style 'lp'"
        self.scale_factor, self.groups = scale_factor, groups
        out_channels = 2 * groups * scale_factor ** 2
        self.offset = nn.Conv2d(in_channels, out_channels, 1)
        nn.init.normal_(self.offset.weight, 0, 0.001)
        nn.init.zeros_(self.offset.bias)
        if dyscope:
            self.scope = nn.Conv2d(in_channels, out_channels, 1, bias=scope_bias)
            nn.init.zeros_(self.scope.weight)
            if scope_bias:
                nn.init.zeros_(self.scope.bias)
        # positions of the s x s children of a pixel: x for all groups, then y for all groups
        s = scale_factor
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        grid_y, grid_x = torch.meshgrid(h, h, indexing="ij")
        pos = torch.stack([grid_x, grid_y]).reshape(2, 1, s * s).repeat(1, groups, 1)
        self.register_buffer("init_pos", pos.reshape(1, -1, 1, 1))

    def forward(self, x):
        if hasattr(self, "scope"):
            offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
        else:
            offset = self.offset(x) * 0.25 + self.init_pos
        b, _, h, w = offset.shape
        s = self.scale_factor
        offset = offset.view(b, 2, -1, h, w)
        xs = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5
        ys = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5
        centre = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
        centre = centre.view(1, 2, 1, h, w)
        norm = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
        coords = 2 * (centre + offset) / norm - 1  # [B, 2, G*s*s, H, W]
        coords = F.pixel_shuffle(coords.reshape(b, -1, h, w), s)  # [B, 2*G, sH, sW]
        coords = coords.view(b, 2, self.groups, s * h, s * w).permute(0, 2, 3, 4, 1)
        sampled = F.grid_sample(x.reshape(b * self.groups, -1, h, w),
                                coords.reshape(b * self.groups, s * h, s * w, 2),
                                mode="bilinear", align_corners=False, padding_mode="border")
        return sampled.view(b, -1, s * h, s * w)


def build_upsampler(cfg, in_channels, scale_factor):
    kind = cfg["type"]
    if kind == "nearest":
        return nn.Upsample(scale_factor=scale_factor, mode="nearest")
    if kind == "dysample":
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
