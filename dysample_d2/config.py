from detectron2.config import CfgNode as CN

from .layers.dysample import DEFAULTS, check_dysample_arguments

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


# The upsamplers MODEL.FPN.UPSAMPLER selects in the CARAFE-layout FPN
# (build_resnet_carafe_fpn_backbone); each makes the full 2H x 2W map.
CARAFE_FPN_UPSAMPLERS = ("dysample", "nearest")
CARAFE_FPN_BACKBONES = ("build_resnet_carafe_fpn_backbone",)


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


def add_dysample_config(cfg):
    """
    Add the DySample keys to a Detectron2 config (in place), the same four at each site:

    MODEL.FPN.DYSAMPLE.*:          the upsamplers of DySample-FPN's top-down pathway
                                   (MODEL.BACKBONE.NAME build_resnet_dysample_fpn_backbone or
                                   build_retinanet_resnet_dysample_fpn_backbone,
                                   or build_resnet_carafe_fpn_backbone with
                                   MODEL.FPN.UPSAMPLER "dysample").
    MODEL.SEM_SEG_HEAD.DYSAMPLE.*: the 2x upsamplers of the semantic FPN head's scale heads
                                   (MODEL.SEM_SEG_HEAD.NAME DySampleSemSegFPNHead).

    MODEL.FPN.UPSAMPLER:           "dysample" or "nearest", the upsampler of the
                                   CARAFE-layout FPN's top-down steps.

    Each node has STYLE ("lp" or "pl"), GROUPS (must divide the site's channels), DYSCOPE
    (False: DySample, True: DySample+) and SCOPE_BIAS (a bias on DySample+'s scope conv).
    """
    cfg.MODEL.FPN.DYSAMPLE = CN()
    _add_site_keys(cfg.MODEL.FPN.DYSAMPLE)
    # Upsampler of each top-down step of the CARAFE-layout FPN (MODEL.BACKBONE.NAME
    # build_resnet_carafe_fpn_backbone): "dysample" (with MODEL.FPN.DYSAMPLE.*) or "nearest".
    cfg.MODEL.FPN.UPSAMPLER = "dysample"
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
    Validate the DySample keys of every site the config selects (see DYSAMPLE_SITES), before
    any model is built or any file written; raises as :func:`dysample_kwargs_from_config`.
    """
    for site, (_channels, (name_key, names)) in DYSAMPLE_SITES.items():
        if _get(cfg, name_key) in names:
            dysample_kwargs_from_config(cfg, site)
    if _get(cfg, "MODEL.BACKBONE.NAME") in CARAFE_FPN_BACKBONES:
        carafe_fpn_upsampler_from_config(cfg)


def carafe_fpn_upsampler_from_config(cfg) -> str:
    """
    MODEL.FPN.UPSAMPLER, validated for the CARAFE-layout FPN (ValueError naming the key and
    the allowed values; also for MODEL.FPN.FUSE_TYPE, which that FPN has only as "sum").
    """
    upsampler = _get(cfg, "MODEL.FPN.UPSAMPLER")
    if upsampler not in CARAFE_FPN_UPSAMPLERS:
        raise ValueError(f"MODEL.FPN.UPSAMPLER must be one of {list(CARAFE_FPN_UPSAMPLERS)}, "
                         f"got {upsampler!r}")
    if cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ValueError(f"MODEL.FPN.FUSE_TYPE must be 'sum' for {cfg.MODEL.BACKBONE.NAME} "
                         f"(the CARAFE-layout FPN adds the upsampled map), got "
                         f"{cfg.MODEL.FPN.FUSE_TYPE!r}")
    return upsampler
