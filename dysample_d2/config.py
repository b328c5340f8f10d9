from typing import Dict, Tuple

from detectron2.config import CfgNode as CN

from .layers.carafe import CARAFE_DEFAULTS
from .layers.dysample import DEFAULTS, check_dysample_arguments
from .layers.upsamplers import UPSAMPLER_OPTIONS, check_upsampler_arguments

# Config nodes of DySample sites -> (the channel key its GROUPS must divide, the registered
# names that build DySample from the node). The early check validates a node only where one
# of those names is selected, so unused nodes never fail a config.
DYSAMPLE_SITES = {
    "MODEL.FPN.DYSAMPLE": (
        "MODEL.FPN.OUT_CHANNELS",
        ("MODEL.BACKBONE.NAME", ("build_resnet_dysample_fpn_backbone",
                                 "build_retinanet_resnet_dysample_fpn_backbone",
                                 "build_resnet_carafe_fpn_backbone")),
    ),
    "MODEL.SEM_SEG_HEAD.DYSAMPLE": (
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        ("MODEL.SEM_SEG_HEAD.NAME", ("DySampleSemSegFPNHead",)),
    ),
}


# The backbones whose top-down steps MODEL.FPN.UPSAMPLER selects (one of
# dysample_d2.layers.UPSAMPLERS), and the CARAFE-layout one among them.
FPN_UPSAMPLER_BACKBONES = ("build_resnet_dysample_fpn_backbone",
                           "build_retinanet_resnet_dysample_fpn_backbone",
                           "build_resnet_carafe_fpn_backbone")
CARAFE_FPN_BACKBONES = ("build_resnet_carafe_fpn_backbone",)
# The config key of each upsampler option (UPSAMPLER_OPTIONS) under MODEL.FPN
_OPTION_KEYS = {
    "upsample_kernel": "MODEL.FPN.UPSAMPLE_KERNEL",
    **{option: f"MODEL.FPN.CARAFE.{option.upper()}" for option in CARAFE_DEFAULTS},
    **{option: f"MODEL.FPN.DYSAMPLE.{option.upper()}" for option in DEFAULTS},
}


def _add_site_keys(node):
    # "lp": offsets predicted from the low-resolution input; "pl": from the pixel-shuffled
    # input (a quarter of the offset conv's input channels at scale 2).
    node.STYLE = DEFAULTS["style"]
    # Channel groups, each with its own sampling positions; must divide the site's channels
    # (MODEL.FPN.OUT_CHANNELS, MODEL.SEM_SEG_HEAD.CONVS_DIM).
    node.GROUPS = DEFAULTS["groups"]
    # False: static scope, offsets * 0.25 (DySample); True: dynamic scope (DySample+).
    node.DYSCOPE = DEFAULTS["dyscope"]
    # True gives DySample+'s scope conv a bias, as in the authors' first dysample.py release
    # (for checkpoints trained with it); needs DYSCOPE True.
    node.SCOPE_BIAS = DEFAULTS["scope_bias"]


def _add_carafe_keys(node):
    # Reassembly kernel size (odd).
    node.UP_KERNEL = CARAFE_DEFAULTS["up_kernel"]
    # Channel groups, each with its own kernels; must divide the channels it upsamples
    # (MODEL.FPN.OUT_CHANNELS, MODEL.ROI_MASK_HEAD.CONV_DIM).
    node.UP_GROUP = CARAFE_DEFAULTS["up_group"]
    # Kernel size (odd) of the content encoder that predicts the reassembly kernels.
    node.ENCODER_KERNEL = CARAFE_DEFAULTS["encoder_kernel"]
    # Dilation of the content encoder.
    node.ENCODER_DILATION = CARAFE_DEFAULTS["encoder_dilation"]
    # Output channels of the 1x1 channel compressor before the content encoder.
    node.COMPRESSED_CHANNELS = CARAFE_DEFAULTS["compressed_channels"]


def add_dysample_config(cfg):
    """
    Add the DySample keys to a Detectron2 config (in place), the same four at each site:

    MODEL.FPN.DYSAMPLE.*:          the upsamplers of DySample-FPN's top-down pathway
                                   (MODEL.BACKBONE.NAME build_resnet_dysample_fpn_backbone,
                                   build_retinanet_resnet_dysample_fpn_backbone or
                                   build_resnet_carafe_fpn_backbone, with
                                   MODEL.FPN.UPSAMPLER "dysample").
    MODEL.SEM_SEG_HEAD.DYSAMPLE.*: the 2x upsamplers of the semantic FPN head's scale heads
                                   (MODEL.SEM_SEG_HEAD.NAME DySampleSemSegFPNHead).

    MODEL.FPN.UPSAMPLER:           the upsampler of the FPN's top-down steps (those
                                   backbones' and build_resnet_carafe_fpn_backbone's), one of
                                   dysample_d2.layers.UPSAMPLERS, with its options
                                   MODEL.FPN.DYSAMPLE.*, MODEL.FPN.CARAFE.* or
                                   MODEL.FPN.UPSAMPLE_KERNEL.

    Each node has STYLE ("lp" or "pl"), GROUPS (must divide the site's channels), DYSCOPE
    (False: DySample, True: DySample+) and SCOPE_BIAS (a bias on DySample+'s scope conv).
    """
    cfg.MODEL.FPN.DYSAMPLE = CN()
    _add_site_keys(cfg.MODEL.FPN.DYSAMPLE)
    # Upsampler of each top-down step of the DySample-FPN and CARAFE-layout FPN backbones:
    # "nearest", "bilinear", "deconv", "pixel_shuffle", "carafe" or "dysample".
    cfg.MODEL.FPN.UPSAMPLER = "dysample"
    # Kernel size of the "deconv" (transposed conv) and "pixel_shuffle" (conv, odd) upsamplers.
    cfg.MODEL.FPN.UPSAMPLE_KERNEL = UPSAMPLER_OPTIONS["deconv"]["upsample_kernel"]
    # The "carafe" upsampler (mmcv's CARAFEPack defaults, as mmdet's FPN_CARAFE configs).
    cfg.MODEL.FPN.CARAFE = CN()
    _add_carafe_keys(cfg.MODEL.FPN.CARAFE)
    # The CARAFE of the mask head MaskRCNNCarafeUpsampleHead (MODEL.ROI_MASK_HEAD.NAME), as
    # mmdet's CARAFE Mask R-CNN configs set it.
    cfg.MODEL.ROI_MASK_HEAD.CARAFE = CN()
    _add_carafe_keys(cfg.MODEL.ROI_MASK_HEAD.CARAFE)
    cfg.MODEL.SEM_SEG_HEAD.DYSAMPLE = CN()
    _add_site_keys(cfg.MODEL.SEM_SEG_HEAD.DYSAMPLE)


def _get(cfg, key: str):
    """The value of dotted `key` in `cfg` (KeyError naming the missing part)."""
    node = cfg
    for part in key.split("."):
        if part not in node:
            raise KeyError(
                f"{key} is missing from the config: call dysample_d2.add_dysample_config(cfg) "
                "before merging the config file."
            )
        node = node[part]
    return node


def dysample_kwargs_from_config(cfg, site: str = "MODEL.FPN.DYSAMPLE") -> dict:
    """
    Read and validate the DySample keys of one site (a key of DYSAMPLE_SITES; default the
    FPN's), raising with the key name and allowed values.

    Returns:
        dict with keys style, groups, dyscope, scope_bias (DySample's constructor arguments).
    """
    if site not in DYSAMPLE_SITES:
        raise KeyError(f"unknown DySample site {site!r}; allowed: {list(DYSAMPLE_SITES)}")
    channels_key = DYSAMPLE_SITES[site][0]
    node = _get(cfg, site)
    kwargs = {argument: node[argument.upper()] for argument in DEFAULTS}
    names = {argument: f"{site}.{argument.upper()}" for argument in DEFAULTS}
    names["in_channels"] = channels_key
    check_dysample_arguments(_get(cfg, channels_key), 2, names=names, **kwargs)
    return kwargs


def check_dysample_config(cfg) -> None:
    """
    Validate the DySample keys of every site the config selects (see DYSAMPLE_SITES) and the
    FPN upsampler keys where such a backbone is selected, before any model is built or any
    file written; raises as :func:`dysample_kwargs_from_config`.
    """
    backbone = _get(cfg, "MODEL.BACKBONE.NAME")
    for site, (_channels, (name_key, names)) in DYSAMPLE_SITES.items():
        if site == "MODEL.FPN.DYSAMPLE" and backbone in FPN_UPSAMPLER_BACKBONES:
            continue  # read by fpn_upsampler_from_config, where "dysample" is selected
        if _get(cfg, name_key) in names:
            dysample_kwargs_from_config(cfg, site)
    if backbone in FPN_UPSAMPLER_BACKBONES:
        fpn_upsampler_from_config(cfg)
    if cfg.MODEL.MASK_ON and cfg.MODEL.ROI_MASK_HEAD.NAME == "MaskRCNNCarafeUpsampleHead":
        mask_head_carafe_from_config(cfg)


def fpn_upsampler_from_config(cfg) -> Tuple[str, Dict[str, object]]:
    """
    MODEL.FPN.UPSAMPLER and its options (MODEL.FPN.DYSAMPLE.*, MODEL.FPN.CARAFE.* or
    MODEL.FPN.UPSAMPLE_KERNEL), validated by `check_upsampler_arguments` (ValueError naming the
    key and the allowed values); for the CARAFE-layout FPN also MODEL.FPN.FUSE_TYPE, which it
    has only as "sum".

    Returns:
        (name, options): the arguments of ``build_upsampler(name, channels, 2, **options)``.
    """
    name = _get(cfg, "MODEL.FPN.UPSAMPLER")
    options = {option: _get(cfg, _OPTION_KEYS[option])
               for option in UPSAMPLER_OPTIONS.get(name, {})}
    names = {"name": "MODEL.FPN.UPSAMPLER", "channels": "MODEL.FPN.OUT_CHANNELS", **_OPTION_KEYS}
    options = check_upsampler_arguments(name, _get(cfg, "MODEL.FPN.OUT_CHANNELS"), 2, options,
                                        names=names)
    carafe_layout = _get(cfg, "MODEL.BACKBONE.NAME") in CARAFE_FPN_BACKBONES
    if carafe_layout and cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ValueError(f"MODEL.FPN.FUSE_TYPE must be 'sum' for {cfg.MODEL.BACKBONE.NAME} "
                         f"(the CARAFE-layout FPN adds the upsampled map), got "
                         f"{cfg.MODEL.FPN.FUSE_TYPE!r}")
    return name, options


def mask_head_carafe_from_config(cfg) -> Dict[str, int]:
    """
    MODEL.ROI_MASK_HEAD.CARAFE.*, the CARAFE options of MaskRCNNCarafeUpsampleHead, validated by
    `check_upsampler_arguments` (ValueError naming the key and the allowed values).
    """
    node = _get(cfg, "MODEL.ROI_MASK_HEAD.CARAFE")
    options = {option: node[option.upper()] for option in CARAFE_DEFAULTS}
    names = {option: f"MODEL.ROI_MASK_HEAD.CARAFE.{option.upper()}" for option in options}
    names["channels"] = "MODEL.ROI_MASK_HEAD.CONV_DIM"
    return check_upsampler_arguments("carafe", cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, 2, options,
                                     names=names)
