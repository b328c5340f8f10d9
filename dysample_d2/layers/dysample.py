"""DySample: a dynamic upsampler that learns where to sample (Liu et al., ICCV 2023).

A 1x1 conv predicts, for every output pixel, an offset from the position that bilinear
upsampling would sample; ``grid_sample`` then reads the input there. With zero offsets the
module is exactly ``F.interpolate(x, scale_factor=scale, mode="bilinear")``.
"""
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import FusedDySample, use_fused

__all__ = ["DySample"]

STYLES = ("lp", "pl")


@lru_cache(maxsize=64)
def _cached_base_grid(
    out_h: int, out_w: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    grid = _base_grid(out_h, out_w, device, dtype)
    grid.requires_grad_(False)
    return grid


def _base_grid(out_h, out_w, device, dtype) -> torch.Tensor:
    """
    Normalized (x, y) positions that bilinear upsampling (align_corners=False) samples.

    Output pixel ``o`` of a row of length ``out_w = s * W`` reads input coordinate
    ``(o + 0.5) / s - 0.5``, i.e. pixel centre plus DySample's initial sub-pixel position;
    normalized to grid_sample's [-1, 1] that is ``2 * (o + 0.5) / out_w - 1``.

    Returns:
        Tensor[out_h, out_w, 2]
    """
    xs = (torch.arange(out_w, device=device, dtype=dtype) + 0.5) * (2.0 / out_w) - 1.0
    ys = (torch.arange(out_h, device=device, dtype=dtype) + 0.5) * (2.0 / out_h) - 1.0
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def _traced_base_grid(x: torch.Tensor, scale: int, dtype: torch.dtype) -> torch.Tensor:
    """Same as `_base_grid`, but built from tensor sizes so a traced graph stays dynamic."""
    size = torch._shape_as_tensor(x)[2:].to(dtype) * scale  # (out_h, out_w)
    h_idx = torch.ones_like(x[0, 0, :, :1], dtype=dtype).repeat_interleave(scale, 0).cumsum(0)
    w_idx = torch.ones_like(x[0, 0, :1, :], dtype=dtype).repeat_interleave(scale, 1).cumsum(1)
    ys = (h_idx - 0.5) * (2.0 / size[0]) - 1.0  # (out_h, 1)
    xs = (w_idx - 0.5) * (2.0 / size[1]) - 1.0  # (1, out_w)
    return torch.stack(torch.broadcast_tensors(xs, ys), dim=-1)


class DySample(nn.Module):
    """
    Args:
        in_channels (int): channels C of the input (and output).
        scale (int): integer upsampling factor s >= 2.
        style (str): "lp" predicts offsets from the low-resolution input
            (2 * groups * s^2 channels); "pl" pixel-shuffles the input first and predicts
            2 * groups channels at high resolution.
        groups (int): channels are split into this many contiguous groups, each sampled
            at its own positions.
        dyscope (bool): False: offset * 0.25 (static scope). True ("DySample+"):
            offset * sigmoid(scope(x)) * 0.5 (dynamic scope).
        scope_bias (bool): give the scope conv a bias, as the authors' first dysample.py
            release did (their current code has none); only with ``dyscope=True``.

    Shapes: input [B, C, H, W] -> output [B, C, s*H, s*W], same dtype as the input.

    ``forward(x, add_to=t)`` adds the upsampled x to ``t`` in place and returns ``t``, as
    ``t += upsample(x)`` (the FPN's lateral sum, as Detectron2's ResNet blocks do
    ``out += shortcut``); on CPU the kernel adds as it writes, without a separate output.
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        style: str = "lp",
        groups: int = 4,
        dyscope: bool = False,
        scope_bias: bool = False,
    ):
        super().__init__()
        _check_arguments(in_channels, scale, style, groups, dyscope, scope_bias)
        self.in_channels = in_channels
        self.scale = scale
        self.style = style
        self.groups = groups
        self.dyscope = dyscope
        self.scope_bias = scope_bias

        if style == "pl":
            conv_in, conv_out = in_channels // scale**2, 2 * groups
        else:
            conv_in, conv_out = in_channels, 2 * groups * scale**2
        self.offset = nn.Conv2d(conv_in, conv_out, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        if dyscope:
            self.scope = nn.Conv2d(conv_in, conv_out, 1, bias=scope_bias)
            nn.init.zeros_(self.scope.weight)
            if scope_bias:
                nn.init.zeros_(self.scope.bias)
        # Kept with the reference implementation's name and layout so its checkpoints load;
        # the sampling itself uses the equivalent cached bilinear grid (see `_base_grid`).
        self.register_buffer("init_pos", self._init_pos(), persistent=True)

    def _init_pos(self) -> torch.Tensor:
        """
        Sub-pixel position of child (i, j) of each input pixel, in input pixels:
        x = h[j], y = h[i], h = (arange(s) - (s - 1) / 2) / s. Channels: all x, then all y;
        within each, group-major, then (i, j) row-major.

        Returns:
            Tensor[1, 2 * groups * s^2, 1, 1]
        """
        s = self.scale
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        x_pos = h.view(1, s).expand(s, s)
        y_pos = h.view(s, 1).expand(s, s)
        pos = torch.stack([x_pos, y_pos])  # [2, s, s]
        return pos.unsqueeze(1).repeat(1, self.groups, 1, 1).reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, scale={self.scale}, style={self.style!r}, "
            f"groups={self.groups}, dyscope={self.dyscope}"
            + (", scope_bias=True" if self.scope_bias else "")
        )

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        """
        Learned offsets from the bilinear sampling positions, in input pixels.

        Returns:
            Tensor[B, 2 * groups, s*H, s*W]: channel ``g`` is the x offset of group ``g``,
            channel ``groups + g`` its y offset.
        """
        if self.style == "pl":
            x = F.pixel_shuffle(x, self.scale)
        offset = self.offset(x)
        if self.dyscope:
            offset = offset * self.scope(x).sigmoid() * 0.5
        else:
            offset = offset * 0.25
        if self.style == "lp":
            offset = F.pixel_shuffle(offset, self.scale)
        return offset

    def sampling_grid(self, x: torch.Tensor) -> torch.Tensor:
        """
        grid_sample grid of every group, normalized to [-1, 1], in float32 (float64 for
        float64 inputs) whatever the input dtype, so half inputs keep sub-pixel precision.

        Returns:
            Tensor[B * groups, s*H, s*W, 2]
        """
        b, _, h, w = x.shape
        grid_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        offset = self.offsets(x).to(grid_dtype)
        out_h, out_w = offset.shape[-2:]
        # [B, 2, G, sH, sW] -> [B, G, sH, sW, 2]
        offset = offset.view(b, 2, self.groups, out_h, out_w).permute(0, 2, 3, 4, 1)
        if torch.jit.is_tracing() or torch.jit.is_scripting() or _is_onnx_exporting():
            base = _traced_base_grid(x, self.scale, grid_dtype)
            size = torch._shape_as_tensor(x)[2:].flip(0).to(grid_dtype)  # (W, H)
            norm = 2.0 / size
        elif _is_compiling():  # torch.compile / torch.export: sizes may be symbolic, no cache
            base = _base_grid(out_h, out_w, x.device, grid_dtype)
            norm = torch.tensor((2.0 / w, 2.0 / h), dtype=grid_dtype, device=x.device)
        else:
            base = _cached_base_grid(out_h, out_w, x.device, grid_dtype)
            norm = torch.tensor((2.0 / w, 2.0 / h), dtype=grid_dtype, device=x.device)
        grid = torch.addcmul(base, offset, norm)
        return grid.reshape(b * self.groups, out_h, out_w, 2)

    def forward(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[B, C, H, W])
            add_to (Tensor[B, C, s*H, s*W], optional): modified in place, see the class doc.

        Returns:
            Tensor[B, C, s*H, s*W]: the upsampled x, or add_to after the sum.
        """
        _check_input(x, self.in_channels)
        if add_to is not None:
            _check_add_to(add_to, x, self.scale)
        if use_fused(x):  # CPU, eager: one fused autograd Function (layers/sampling.py)
            return self._forward_fused(x, add_to)
        # CUDA, tracing, scripting, export: conv2d + grid_sample, the reference formulation
        b, c, h, w = x.shape
        grid = self.sampling_grid(x)
        # Sample in the grid's precision; grid_sample needs input and grid of one dtype.
        sampled = F.grid_sample(
            x.reshape(b * self.groups, c // self.groups, h, w).to(grid.dtype),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        sampled = sampled.view(b, c, self.scale * h, self.scale * w).to(x.dtype)
        return sampled if add_to is None else add_to.add_(sampled)

    def _forward_fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor]) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.scale
        grid_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        base = _cached_base_grid(s * h, s * w, x.device, grid_dtype)
        factor = 0.5 if self.dyscope else 0.25  # the scope factor, folded into the normalizer
        norm = torch.tensor((factor * 2.0 / w, factor * 2.0 / h), dtype=grid_dtype)
        weight, bias = self._offset_matrix()
        # the sampling grid is kept for a backward only
        keep_grid = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        return FusedDySample.apply(
            x, weight, bias, base, norm, s, self.groups, self.dyscope, keep_grid, add_to,
            self.style == "pl",
        )

    def _offset_matrix(self):
        """
        The offset (and scope) 1x1 convs as one [R, C'] matrix and the bias of its offset
        columns in the lp order (x|y, group, i, j). lp: C' = C, R = 2 * groups * s^2 (x2
        with dyscope). pl: the convs read pixel_shuffle(x), whose channel c' at sub-pixel
        k = i * s + j is input channel c' * s^2 + k: R = 2 * groups (x2), C' = C / s^2, applied
        to each sub-pixel's channels by the Function (``pixel_shuffled``).
        """
        weight = self.offset.weight.flatten(1)
        bias = self.offset.bias
        if self.dyscope:
            weight = torch.cat([weight, self.scope.weight.flatten(1)])
            if self.scope_bias:
                bias = torch.cat([bias, self.scope.bias])
        if self.style == "pl":
            bias = bias.repeat_interleave(self.scale**2)
        return weight, bias


def _is_onnx_exporting() -> bool:
    is_onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", None)
    return is_onnx_exporting is not None and is_onnx_exporting()


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def _check_arguments(in_channels, scale, style, groups, dyscope, scope_bias) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"DySample: in_channels must be a positive int, got {in_channels!r}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
        raise ValueError(f"DySample: scale must be an int >= 2, got {scale!r}")
    if style not in STYLES:
        raise ValueError(f"DySample: style must be one of {STYLES}, got {style!r}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"DySample: groups must be an int >= 1, got {groups!r}")
    if in_channels % groups != 0:
        raise ValueError(
            f"DySample: groups={groups} must divide in_channels={in_channels} "
            f"(allowed: divisors of {in_channels})"
        )
    if style == "pl" and in_channels % scale**2 != 0:
        raise ValueError(
            f"DySample: style='pl' needs in_channels divisible by scale**2={scale**2}, "
            f"got in_channels={in_channels}"
        )
    if not isinstance(dyscope, bool):
        raise ValueError(f"DySample: dyscope must be True or False, got {dyscope!r}")
    if not isinstance(scope_bias, bool):
        raise ValueError(f"DySample: scope_bias must be True or False, got {scope_bias!r}")
    if scope_bias and not dyscope:
        raise ValueError(
            "DySample: scope_bias=True needs dyscope=True (only DySample+ has a scope conv)"
        )


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"DySample: expected a 4-D input [B, C, H, W], got shape {tuple(x.shape)}")
    if not torch.jit.is_tracing() and x.shape[1] != in_channels:
        raise ValueError(
            f"DySample: expected {in_channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )


def _check_add_to(add_to: torch.Tensor, x: torch.Tensor, scale: int) -> None:
    if torch.jit.is_tracing():
        return  # sizes are traced values; the in-place add checks them
    expected = (x.shape[0], x.shape[1], scale * x.shape[2], scale * x.shape[3])
    if tuple(add_to.shape) != expected:
        raise ValueError(
            f"DySample: add_to must have the output's shape {expected} "
            f"(input shape {tuple(x.shape)}, scale {scale}), got {tuple(add_to.shape)}"
        )
    if add_to.device != x.device:
        raise ValueError(f"DySample: add_to is on {add_to.device}, the input on {x.device}")
