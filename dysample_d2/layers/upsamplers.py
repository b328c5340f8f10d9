"""The upsamplers of an FPN's top-down step that DySample is compared with, one factory for all.

Each is built as mmdet's FPN_CARAFE builds it (``mmdet/models/necks/fpn_carafe.py`` with
mmcv's ``build_upsample_layer``), with mmcv's module types, parameter names and
initialization, so FPN_CARAFE checkpoints map name for name:

- "nearest", "bilinear": ``nn.Upsample`` (bilinear with align_corners=False); no parameters.
- "deconv": ``nn.ConvTranspose2d(C, C, k, stride=s)``, FPN_CARAFE's padding ``(k - 1) // 2``
  and the output padding that makes the output exactly s*H x s*W (FPN_CARAFE's
  ``(k - 1) // 2`` at k = 3; where it gives a larger output, its first s*H rows and columns,
  which the neck keeps, are these).
- "pixel_shuffle": mmcv's ``PixelShufflePack``: a k x k conv to C * s^2 channels, then
  ``pixel_shuffle``.
- "carafe": mmcv's ``CARAFEPack`` (carafe.py).
- "dysample": this package's `DySample`.

FPN_CARAFE's ``init_weights`` gives every Conv2d and ConvTranspose2d xavier-uniform weights and
zero biases; CARAFE then re-initializes its content encoder. The deconvolution and pixel
shuffle kernel size defaults to 3, as the DySample authors' detection-with-upsamplers builds
them (``mmdet/models/upsamplers/build_upsampler.py``); FPN_CARAFE has no default.

Every upsampler maps [B, C, H, W] to [B, C, s*H, s*W]; a neck slices the output to its lateral.
"""
import inspect
from typing import Dict, Optional

from torch import nn

from .carafe import CARAFE
from .dysample import DySample, check_dysample_arguments

__all__ = ["UPSAMPLERS", "UPSAMPLER_OPTIONS", "PixelShufflePack", "build_upsampler",
           "check_upsampler_arguments"]


class PixelShufflePack(nn.Module):
    """mmcv's ``PixelShufflePack``: ``upsample_conv`` (k x k, C_in -> C_out * s^2, padding
    (k - 1) // 2), then ``pixel_shuffle(s)``."""

    def __init__(self, in_channels: int, out_channels: int, scale: int,
                 upsample_kernel: int = 3):
        super().__init__()
        self.scale = scale
        self.upsample_conv = nn.Conv2d(in_channels, out_channels * scale**2, upsample_kernel,
                                       padding=(upsample_kernel - 1) // 2)
        _xavier_uniform(self.upsample_conv)

    def forward(self, x):
        return nn.functional.pixel_shuffle(self.upsample_conv(x), self.scale)


def _xavier_uniform(conv):
    """mmcv's ``xavier_init(conv, distribution="uniform")``: gain 1, zero bias."""
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _resize(mode):
    def build(channels: int, scale: int) -> nn.Module:
        return nn.Upsample(scale_factor=scale, mode=mode,
                           align_corners=False if mode == "bilinear" else None)
    return build


def _deconv(channels: int, scale: int, upsample_kernel: int = 3) -> nn.Module:
    """Transposed conv of kernel ``upsample_kernel``, output exactly s*H x s*W."""
    padding = (upsample_kernel - 1) // 2
    # (H - 1) * s - 2 * padding + k + output_padding = s * H
    deconv = nn.ConvTranspose2d(channels, channels, upsample_kernel, stride=scale,
                                padding=padding,
                                output_padding=scale - upsample_kernel + 2 * padding)
    return _xavier_uniform(deconv)


def _pixel_shuffle(channels: int, scale: int, upsample_kernel: int = 3) -> nn.Module:
    return PixelShufflePack(channels, channels, scale, upsample_kernel)


# Each upsampler's constructor, called as ``constructor(channels, scale, **options)``
_CONSTRUCTORS = {
    "nearest": _resize("nearest"),
    "bilinear": _resize("bilinear"),
    "deconv": _deconv,
    "pixel_shuffle": _pixel_shuffle,
    "carafe": CARAFE,
    "dysample": DySample,
}
UPSAMPLERS = tuple(_CONSTRUCTORS)
# The options each upsampler takes, with their defaults: its constructor's arguments after
# (channels, scale)
UPSAMPLER_OPTIONS: Dict[str, Dict[str, object]] = {
    name: {p.name: p.default for p in list(inspect.signature(constructor).parameters.values())[2:]}
    for name, constructor in _CONSTRUCTORS.items()
}


def check_upsampler_arguments(name, channels, scale=2, options=None,
                              names: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """
    The one check of an upsampler's arguments, for `build_upsampler` and for every config that
    sets them: raises ValueError naming the argument and its allowed values.

    Args:
        options (dict, optional): the upsampler's options (see `UPSAMPLER_OPTIONS`).
        names (dict, optional): what the caller calls each argument in its messages, e.g.
            ``{"name": "MODEL.FPN.UPSAMPLER", "channels": "MODEL.FPN.OUT_CHANNELS"}``;
            default the argument names.

    Returns:
        dict: the upsampler's options, defaults filled in.
    """
    names = names or {}

    def name_of(argument):
        return names.get(argument, argument)

    def refuse(message):
        raise ValueError(message if names else f"build_upsampler: {message}")

    if name not in UPSAMPLERS:
        refuse(f"{name_of('name')} must be one of {list(UPSAMPLERS)}, got {name!r}")
    allowed = UPSAMPLER_OPTIONS[name]
    options = dict(options or {})
    for option in options:
        if option not in allowed:
            refuse(f"{name_of(option)} is not an option of upsampler {name!r}; it takes "
                   + (f"{sorted(allowed)}" if allowed else "no options"))
    options = {**allowed, **options}
    for argument, value, least in (("channels", channels, 1), ("scale", scale, 2)):
        if not _is_int(value) or value < least:
            refuse(f"{name_of(argument)} must be an int >= {least}, got {value!r}")
    if name == "dysample":
        dysample_names = {argument: name_of(argument) for argument in (*options, "scale")}
        dysample_names["in_channels"] = name_of("channels")
        check_dysample_arguments(channels, scale, names=dysample_names if names else None,
                                 **options)
        return options
    for option, value in options.items():
        if not _is_int(value) or value < 1:
            refuse(f"{name_of(option)} must be an int >= 1, got {value!r}")
    odd = {"pixel_shuffle": ("upsample_kernel",), "carafe": ("up_kernel", "encoder_kernel")}
    for option in odd.get(name, ()):
        if options[option] % 2 == 0:
            refuse(f"{name_of(option)} must be odd (the output keeps the input's size), "
                   f"got {options[option]}")
    if name == "carafe" and channels % options["up_group"]:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        refuse(f"{name_of('up_group')}={options['up_group']} must divide "
               f"{name_of('channels')}={channels}; allowed values: {divisors}")
    return options


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_upsampler(name: str, channels: int, scale: int = 2, **options) -> nn.Module:
    """
    The upsampler `name` (one of `UPSAMPLERS`) of ``channels`` channels, x``scale``.

    Args:
        options: that upsampler's options (`UPSAMPLER_OPTIONS`); others raise ValueError.

    Returns:
        nn.Module: [B, C, H, W] -> [B, C, s*H, s*W].
    """
    options = check_upsampler_arguments(name, channels, scale, options)
    return _CONSTRUCTORS[name](channels, scale, **options)
