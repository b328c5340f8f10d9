"""
The straightforward DySample, written as the paper's released code does it (coordinate
grid in the input dtype, pixel_shuffle of coordinates, one grid_sample over B * groups).
Used by the tests as the oracle the project's implementation must equal.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ReferenceDySample(nn.Module):
    def __init__(self, in_channels, scale=2, style="lp", groups=4, dyscope=False, scope_bias=False):
        super().__init__()
        self.scale, self.style, self.groups = scale, style, groups
        if style == "pl":
            conv_in, conv_out = in_channels // scale**2, 2 * groups
        else:
            conv_in, conv_out = in_channels, 2 * groups * scale**2
        self.offset = nn.Conv2d(conv_in, conv_out, 1)
        if dyscope:
            self.scope = nn.Conv2d(conv_in, conv_out, 1, bias=scope_bias)
        self.register_buffer("init_pos", self._init_pos())

    def _init_pos(self):
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
