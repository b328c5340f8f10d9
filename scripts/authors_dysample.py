"""
The DySample authors' formulation, kept as the oracle the project's DySample must equal.

Follows the DySample authors' MIT-licensed code (tiny-smart/dysample, ``dysample.py``): a
coordinate grid in the input dtype, offsets plus ``init_pos`` added to pixel centres,
normalized, pixel-shuffled to the output grid and read with one ``grid_sample`` over
B * groups (bilinear, align_corners=False, border padding). Same parameter names, shapes and
initialization, so state dicts load both ways. ``scope_bias`` gives the scope conv a bias, as
their first release did.

Used by the tests and by the mmdet equivalence check (scripts/mmdet_equivalence/), whose
environment has no Detectron2: this file imports torch only.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AuthorsDySample"]


def _initialized(conv, std):
    """mmcv's normal_init (std > 0) or constant_init (std 0), as the authors initialize."""
    if std:
        nn.init.normal_(conv.weight, 0, std)
    else:
        nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class AuthorsDySample(nn.Module):
    def __init__(self, in_channels, scale=2, style="lp", groups=4, dyscope=False,
                 scope_bias=False):
        super().__init__()
        assert style in ("lp", "pl")
        self.scale, self.style, self.groups = scale, style, groups
        if style == "pl":
            conv_in, conv_out = in_channels // scale**2, 2 * groups
        else:
            conv_in, conv_out = in_channels, 2 * groups * scale**2
        self.offset = _initialized(nn.Conv2d(conv_in, conv_out, 1), std=0.001)
        if dyscope:
            self.scope = _initialized(nn.Conv2d(conv_in, conv_out, 1, bias=scope_bias), std=0)
        self.register_buffer("init_pos", self._init_pos())

    def _init_pos(self):
        """Positions of the s x s children of a pixel: x for all groups, then y for all groups."""
        s = self.scale
        h = torch.arange((-s + 1) / 2, (s - 1) / 2 + 1) / s
        pos = torch.stack(torch.meshgrid([h, h], indexing="ij")).transpose(1, 2)
        return pos.repeat(1, self.groups, 1).reshape(1, -1, 1, 1)

    def sample(self, x, offset):
        b, _, h, w = offset.shape
        offset = offset.view(b, 2, -1, h, w)
        ys = torch.arange(h) + 0.5
        xs = torch.arange(w) + 0.5
        coords = torch.stack(torch.meshgrid([xs, ys], indexing="ij")).transpose(1, 2)
        coords = coords.unsqueeze(1).unsqueeze(0).type(x.dtype).to(x.device)
        normalizer = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
        coords = 2 * (coords + offset) / normalizer - 1
        s = self.scale
        coords = F.pixel_shuffle(coords.view(b, -1, h, w), s).view(b, 2, -1, s * h, s * w)
        coords = coords.permute(0, 2, 3, 4, 1).contiguous().flatten(0, 1)
        out = F.grid_sample(
            x.reshape(b * self.groups, -1, h, w), coords, mode="bilinear",
            align_corners=False, padding_mode="border",
        )
        return out.view(b, -1, s * h, s * w)

    def forward(self, x):
        s = self.scale
        if self.style == "pl":
            x_ = F.pixel_shuffle(x, s)
            if hasattr(self, "scope"):
                offset = self.offset(x_) * self.scope(x_).sigmoid()
                offset = F.pixel_unshuffle(offset, s) * 0.5 + self.init_pos
            else:
                offset = F.pixel_unshuffle(self.offset(x_), s) * 0.25 + self.init_pos
        elif hasattr(self, "scope"):
            offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
        else:
            offset = self.offset(x) * 0.25 + self.init_pos
        return self.sample(x, offset)
