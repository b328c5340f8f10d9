"""DySample: a dynamic upsampler that learns where to sample (Liu et al., ICCV 2023).

A 1x1 conv predicts, for every output pixel, an offset from the position that bilinear
upsampling would sample; ``grid_sample`` then reads the input there. With zero offsets the
module is exactly ``F.interpolate(x, scale_factor=scale, mode="bilinear")``.

``DySample.forward`` runs the sampler ``sampler_for(x)`` names (backend.py: how it is chosen):
the reference formulation (1x1 conv + ``grid_sample``), its gather form (gather.py), or on
CPU in eager mode the compiled kernel's Function (sampling.py), which computes the same.
"""
from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backend import grid_dtype, sampler_for, tracing_mode
from .gather import sample_gather
from .sampling import kernel_forward

__all__ = ["DySample", "STYLES", "check_dysample_arguments"]

STYLES = ("lp", "pl")


def _base_grid_of(out_h, out_w, device, dtype, extent=None) -> torch.Tensor:
    """`_base_grid`, cached in eager mode (traced or symbolic sizes make no cache key)."""
    if tracing_mode() == "eager":
        return _cached_base_grid(out_h, out_w, device, dtype, extent)
    return _base_grid(out_h, out_w, device, dtype, extent)


@lru_cache(maxsize=64)
def _cached_base_grid(out_h, out_w, device, dtype, extent=None) -> torch.Tensor:
    grid = _base_grid(out_h, out_w, device, dtype, extent)
    grid.requires_grad_(False)
    return grid


def _base_grid(out_h, out_w, device, dtype, extent=None) -> torch.Tensor:
    """
    Normalized (x, y) positions that bilinear resizing to out_h x out_w (align_corners=False)
    samples, as ``F.interpolate(size=(out_h, out_w))`` does.

    Output pixel ``o`` of a row of length ``out_w`` reads input coordinate
    ``(o + 0.5) * W / out_w - 0.5`` (for ``out_w = s * W``: pixel centre plus DySample's
    initial sub-pixel position); normalized to grid_sample's [-1, 1] that is
    ``2 * (o + 0.5) / out_w - 1``, whatever W. Built from the sizes alone, which tracing
    records as tensors: a traced graph stays dynamic.

    Args:
        extent ((rows, cols), optional): make this many rows and columns of positions (the
            kernel samples a whole s*H x s*W grid, then crops); default (out_h, out_w).

    Returns:
        Tensor[rows, cols, 2]
    """
    rows, cols = (out_h, out_w) if extent is None else extent
    step_x, step_y = _two_over((out_w, out_h), device, dtype).unbind()
    xs = (torch.arange(cols, device=device, dtype=dtype) + 0.5) * step_x - 1.0
    ys = (torch.arange(rows, device=device, dtype=dtype) + 0.5) * step_y - 1.0
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def _two_over(sizes, device, dtype) -> torch.Tensor:
    """
    ``2 / n`` for each size ``n``, as a ``dtype`` tensor on ``device``: the one place where
    the grid's normalisation is computed (base grid, offsets, the kernel's normalizer).

    In eager mode and under torch.compile / torch.export each size is filled on the device
    (no host-to-device copy, which would wait for the stream and rule out CUDA graph capture)
    and divided in float64, the precision of Python's ``2.0 / n``: the values are those of
    the Python expression rounded to ``dtype``. Tensor ops under torch.export too, whose
    symbolic sizes would otherwise become Python float arithmetic (``sym_float``,
    ``truediv``) that OpenVINO cannot convert. While tracing, a size read from a shape is
    the tracer's tensor: stacked as it is, so that the graph computes from the traced shape
    (a tensor filled with it would be a constant); a size given as a number is one.
    """
    if tracing_mode() == "trace":
        sizes = torch.stack([n if isinstance(n, torch.Tensor) else torch.full((), n)
                             for n in sizes])
        return 2.0 / sizes.to(device, dtype)
    sizes = torch.stack([torch.full((), n, dtype=torch.float64, device=device) for n in sizes])
    return (2.0 / sizes).to(dtype)


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

    The defaults are the authors' DySample-S: offsets from the low-resolution input, 4 channel
    groups, static scope. Bad arguments raise ValueError (`check_dysample_arguments`).

    Shapes: input [B, C, H, W] -> output [B, C, s*H, s*W], same dtype as the input.

    ``forward(x, add_to=t)`` adds the upsampled x to ``t`` in place and returns ``t``, as
    ``t += upsample(x)`` (the FPN's lateral sum, as Detectron2's ResNet blocks do
    ``out += shortcut``); on CPU the kernel adds as it writes, without a separate output.

    Other output sizes: ``forward(x, size=(Ho, Wo))``, or an ``add_to`` of that size, with
    ``s*(H-1) < Ho <= s*H`` (likewise Wo): the sizes whose stride-s downsampling gives H, e.g.
    an FPN's lateral 25x41 above a 13x21 level. The offsets are predicted at s*H x s*W as
    always and cropped to Ho x Wo; each output pixel starts from the position that
    ``F.interpolate(x, size=(Ho, Wo), mode="bilinear", align_corners=False)`` samples, so zero
    offsets give exactly that interpolation. At Ho = s*H this is the usual grid, bit for bit.
    Both samplers support it (the kernel samples s*H x s*W and crops).
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
        check_dysample_arguments(in_channels, scale, style, groups, dyscope, scope_bias)
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

    def __prepare_scriptable__(self):
        """torch.jit.script (and Detectron2's ``scripting_with_instances``) calls this on every
        submodule before compiling: stop there in one line, for any model holding a DySample,
        since its CPU kernel is an autograd Function and its grid cache an ``lru_cache``."""
        raise RuntimeError(
            "DySample cannot be compiled by torch.jit.script: export the model with "
            "torch.jit.trace (Detectron2's TracingAdapter) or torch.export instead")

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

    def sampling_offsets(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """
        `offsets` of every group at output size `size` (Ho, Wo), in `grid_dtype` (float32, or
        float64 for float64 inputs) whatever the input dtype.

        Returns:
            Tensor[B, groups, Ho, Wo, 2]: (x, y) offsets in input pixels.
        """
        b = x.shape[0]
        out_h, out_w = size
        # offsets of the s*H x s*W output, cropped to the requested size (a view at s*H x s*W)
        offset = self.offsets(x).to(grid_dtype(x.dtype))[..., :out_h, :out_w]
        # [B, 2, G, Ho, Wo] -> [B, G, Ho, Wo, 2]
        return offset.reshape(b, 2, self.groups, out_h, out_w).permute(0, 2, 3, 4, 1)

    def sampling_grid(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """
        grid_sample grid of every group, normalized to [-1, 1], in `grid_dtype` whatever the
        input dtype, so half inputs keep sub-pixel precision.

        Args:
            size ((Ho, Wo), optional): output size (see `forward`); default (s*H, s*W).

        Returns:
            Tensor[B * groups, Ho, Wo, 2]
        """
        b, _, h, w = x.shape
        gdt = grid_dtype(x.dtype)
        out_h, out_w = (self.scale * h, self.scale * w) if size is None else size
        offset = self.sampling_offsets(x, (out_h, out_w))
        base = _base_grid_of(out_h, out_w, x.device, gdt)
        grid = torch.addcmul(base, offset, _two_over((w, h), x.device, gdt))
        return grid.reshape(b * self.groups, out_h, out_w, 2)

    def forward(
        self,
        x: torch.Tensor,
        add_to: Optional[torch.Tensor] = None,
        size: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """
        Args:
            x (Tensor[B, C, H, W])
            add_to (Tensor[B, C, Ho, Wo], optional): modified in place, see the class doc; its
                spatial size is the output size.
            size ((Ho, Wo), optional): output size, default (s*H, s*W); see the class doc.

        Returns:
            Tensor[B, C, Ho, Wo]: the upsampled x, or add_to after the sum.
        """
        _check_input(x, self.in_channels)
        out_size = _output_size(x, self.scale, add_to, size)
        name = sampler_for(x)
        b, c, h, w = x.shape
        gdt = grid_dtype(x.dtype)
        if name == "kernel":  # CPU, eager: the compiled kernel's Function (sampling.py)
            # the positions of the requested output, continued to the kernel's s*H x s*W
            extent = (self.scale * h, self.scale * w)
            base = _base_grid_of(*out_size, x.device, gdt, extent)
            step = _two_over((w, h), x.device, gdt)
            return kernel_forward(self, x, base, step, add_to, out_size)
        # the reference formulation: conv2d + grid_sample (or its gather form)
        # Sample in the grid's precision; grid_sample needs input and grid of one dtype.
        x_groups = x.reshape(b * self.groups, c // self.groups, h, w).to(gdt)
        if name == "gather":
            offset = self.sampling_offsets(x, out_size)
            sampled = sample_gather(x_groups, offset.reshape(b * self.groups, *out_size, 2))
        else:
            grid = self.sampling_grid(x, out_size)
            sampled = F.grid_sample(
                x_groups, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
        sampled = sampled.view(b, c, out_size[0], out_size[1]).to(x.dtype)
        return sampled if add_to is None else add_to.add_(sampled)


def check_dysample_arguments(in_channels, scale, style, groups, dyscope, scope_bias,
                             names=None) -> None:
    """
    The one check of DySample's arguments (those of its constructor), for the module and for
    every config that sets them: raises ValueError naming the argument and its allowed values.

    Args:
        names (dict, optional): the config key of each argument, for the messages, e.g.
            ``{"groups": "MODEL.FPN.DYSAMPLE.GROUPS", "in_channels": "MODEL.FPN.OUT_CHANNELS"}``;
            default the argument names.
    """
    names = names or {}

    def name(argument):
        return names.get(argument, argument)

    def refuse(message):
        raise ValueError(message if names else f"DySample: {message}")

    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        refuse(f"{name('in_channels')} must be a positive int, got {in_channels!r}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
        refuse(f"{name('scale')} must be an int >= 2, got {scale!r}")
    if style not in STYLES:
        refuse(f"{name('style')} must be one of {list(STYLES)}, got {style!r}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        refuse(f"{name('groups')} must be an int >= 1, got {groups!r}")
    if in_channels % groups != 0:
        divisors = [d for d in range(1, in_channels + 1) if in_channels % d == 0]
        refuse(f"{name('groups')}={groups} must divide {name('in_channels')}={in_channels}; "
               f"allowed values: {divisors}")
    if style == "pl" and in_channels % scale**2 != 0:
        refuse(f"{name('style')}='pl' needs {name('in_channels')} divisible by "
               f"scale**2={scale**2}, got {in_channels}")
    for argument, value in (("dyscope", dyscope), ("scope_bias", scope_bias)):
        if not isinstance(value, bool):
            refuse(f"{name(argument)} must be True or False, got {value!r}")
    if scope_bias and not dyscope:
        refuse(f"{name('scope_bias')}=True needs {name('dyscope')}=True "
               "(only DySample+ has a scope conv)")


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"DySample: expected a 4-D input [B, C, H, W], got shape {tuple(x.shape)}")
    if tracing_mode() != "trace" and x.shape[1] != in_channels:
        raise ValueError(
            f"DySample: expected {in_channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )


def _output_size(x: torch.Tensor, scale: int, add_to, size):
    """
    (Ho, Wo): add_to's spatial size, else ``size``, else (s*H, s*W). Each must round up to
    the input size when divided by the scale (s*(H-1) < Ho <= s*H): the sizes whose stride-s
    downsampling (a convolution with padding) gives H, as in an FPN at any input size.
    """
    h, w = x.shape[-2:]
    if add_to is not None:
        if tracing_mode() != "trace":  # traced sizes: the in-place add checks them
            _check_add_to(add_to, x, size)
        out_size = tuple(add_to.shape[-2:])
    elif size is not None:
        out_size = tuple(size)
    else:
        return scale * h, scale * w
    if tracing_mode() != "trace":
        for axis, n, out in (("height", h, out_size[0]), ("width", w, out_size[1])):
            if not scale * (n - 1) < out <= scale * n:
                raise ValueError(
                    f"DySample: output {axis} {out} does not fit input {axis} {n} at scale "
                    f"{scale}: allowed {scale * (n - 1) + 1}..{scale * n} (output size "
                    f"{out_size}, input shape {tuple(x.shape)})"
                )
    return out_size


def _check_add_to(add_to: torch.Tensor, x: torch.Tensor, size) -> None:
    if add_to.dim() != 4 or tuple(add_to.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(
            f"DySample: add_to must be [B, C, Ho, Wo] with the input's B and C {tuple(x.shape[:2])}"
            f", got shape {tuple(add_to.shape)}"
        )
    if size is not None and tuple(size) != tuple(add_to.shape[-2:]):
        raise ValueError(
            f"DySample: size {tuple(size)} differs from add_to's size {tuple(add_to.shape[-2:])}"
            " (add_to sets the output size: give one of them)"
        )
    if add_to.device != x.device:
        raise ValueError(f"DySample: add_to is on {add_to.device}, the input on {x.device}")
