"""The DySample keys of a Detectron2 config, and the one table of the config sites that build
upsamplers, through which YACS and lazy configs are checked before anything is built."""
import inspect
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

from detectron2.config import CfgNode as CN
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .layers.upsamplers import UPSAMPLER_OPTIONS, check_upsampler_arguments

__all__ = ["SITES", "add_dysample_config", "check_dysample_config", "upsampler_from_config"]


def _add_dysample_keys(node):
    # "lp": offsets predicted from the low-resolution input; "pl": from the pixel-shuffled
    # input (a quarter of the offset conv's input channels at scale 2).
    node.STYLE = "lp"
    # Channel groups, each with its own sampling positions; must divide the site's channels
    # (MODEL.FPN.OUT_CHANNELS, MODEL.SEM_SEG_HEAD.CONVS_DIM).
    node.GROUPS = 4
    # False: static scope, offsets * 0.25 (DySample); True: dynamic scope (DySample+).
    node.DYSCOPE = False
    # True gives DySample+'s scope conv a bias, as in the authors' first dysample.py release
    # (for checkpoints trained with it); needs DYSCOPE True.
    node.SCOPE_BIAS = False


def _add_carafe_keys(node):
    # Reassembly kernel size (odd).
    node.UP_KERNEL = 5
    # Channel groups, each with its own kernels; must divide the channels it upsamples
    # (MODEL.FPN.OUT_CHANNELS, MODEL.ROI_MASK_HEAD.CONV_DIM).
    node.UP_GROUP = 1
    # Kernel size (odd) of the content encoder that predicts the reassembly kernels.
    node.ENCODER_KERNEL = 3
    # Dilation of the content encoder.
    node.ENCODER_DILATION = 1
    # Output channels of the 1x1 channel compressor before the content encoder.
    node.COMPRESSED_CHANNELS = 64


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
                                   backbones'), one of dysample_d2.layers.UPSAMPLERS, with its
                                   options MODEL.FPN.DYSAMPLE.*, MODEL.FPN.CARAFE.* or
                                   MODEL.FPN.UPSAMPLE_KERNEL.

    Each node has STYLE ("lp" or "pl"), GROUPS (must divide the site's channels), DYSCOPE
    (False: DySample, True: DySample+) and SCOPE_BIAS (a bias on DySample+'s scope conv).
    """
    cfg.MODEL.FPN.DYSAMPLE = CN()
    _add_dysample_keys(cfg.MODEL.FPN.DYSAMPLE)
    # Upsampler of each top-down step of the DySample-FPN and CARAFE-layout FPN backbones:
    # "nearest", "bilinear", "deconv", "pixel_shuffle", "carafe" or "dysample".
    cfg.MODEL.FPN.UPSAMPLER = "dysample"
    # Kernel size of the "deconv" (transposed conv) and "pixel_shuffle" (conv, odd) upsamplers.
    cfg.MODEL.FPN.UPSAMPLE_KERNEL = 3
    # The "carafe" upsampler (mmcv's CARAFEPack defaults, as mmdet's FPN_CARAFE configs).
    cfg.MODEL.FPN.CARAFE = CN()
    _add_carafe_keys(cfg.MODEL.FPN.CARAFE)
    # The CARAFE of the mask head MaskRCNNCarafeUpsampleHead (MODEL.ROI_MASK_HEAD.NAME), as
    # mmdet's CARAFE Mask R-CNN configs set it.
    cfg.MODEL.ROI_MASK_HEAD.CARAFE = CN()
    _add_carafe_keys(cfg.MODEL.ROI_MASK_HEAD.CARAFE)
    cfg.MODEL.SEM_SEG_HEAD.DYSAMPLE = CN()
    _add_dysample_keys(cfg.MODEL.SEM_SEG_HEAD.DYSAMPLE)


class Site(NamedTuple):
    """
    A module that builds upsamplers from a config, and where each config format keeps their
    arguments:

    yacs: its YACS node (None: lazy configs only), built where every ``selected_by`` key has
        one of its names; the options of upsampler u are ``<yacs>.<U>.<OPTION>`` for
        "dysample" and "carafe", ``<yacs>.<OPTION>`` for the others.
    lazy: the LazyCall targets (class names) that build it; their upsampler options are the
        node's keys (its constructor's keyword arguments).
    channels: (YACS key under ``yacs``, lazy argument, or a function of the lazy node giving
        the channels of each upsampler it builds).
    upsampler: the upsampler it builds, or None: the one its ``UPSAMPLER`` key (YACS) or
        ``upsampler`` argument (lazy, default "dysample") names.
    """

    yacs: Optional[str]
    selected_by: Dict[str, Tuple]
    lazy: Tuple[str, ...]
    channels: Tuple[Optional[str], Union[str, Callable, None]]
    upsampler: Optional[str]


def _pyramid_channels(node):
    """The channels of a LazyCall(DySampleSimpleFeaturePyramid)'s DySample modules, where its
    ``net`` states its width (a ViT's embed_dim)."""
    from .modeling.vitdet import DySampleSimpleFeaturePyramid  # the modeling imports this

    net = node.get("net")
    if not (isinstance(net, DictConfig) and "embed_dim" in net):
        return []
    return DySampleSimpleFeaturePyramid.upsampler_channels(net.embed_dim, node.scale_factors)


CARAFE_FPN_BACKBONES = ("build_resnet_carafe_fpn_backbone",)
SITES = (
    Site("MODEL.FPN", {"MODEL.BACKBONE.NAME": ("build_resnet_dysample_fpn_backbone",
                                               "build_retinanet_resnet_dysample_fpn_backbone",
                                               *CARAFE_FPN_BACKBONES)},
         ("DySampleFPN", "CarafeFPN"), ("OUT_CHANNELS", "out_channels"), None),
    Site("MODEL.SEM_SEG_HEAD", {"MODEL.SEM_SEG_HEAD.NAME": ("DySampleSemSegFPNHead",)},
         ("DySampleSemSegFPNHead",), ("CONVS_DIM", "conv_dims"), "dysample"),
    Site("MODEL.ROI_MASK_HEAD", {"MODEL.MASK_ON": (True,),
                                 "MODEL.ROI_MASK_HEAD.NAME": ("MaskRCNNCarafeUpsampleHead",)},
         (), ("CONV_DIM", None), "carafe"),
    Site(None, {}, ("DySampleSimpleFeaturePyramid",), (None, _pyramid_channels), "dysample"),
)


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


def upsampler_from_config(cfg, node: str = "MODEL.FPN"):
    """
    The upsampler of the YACS site ``node`` (a `SITES` entry's ``yacs``) and its options,
    validated by `check_upsampler_arguments` with the config keys in its messages (ValueError
    naming the key and the allowed values); for the CARAFE-layout FPN also MODEL.FPN.FUSE_TYPE,
    which it has only as "sum".

    Returns:
        (name, options): the arguments of ``build_upsampler(name, channels, 2, **options)``.
    """
    site = next(s for s in SITES if s.yacs == node)
    name_key = f"{node}.UPSAMPLER"
    name = site.upsampler or _get(cfg, name_key)
    keys = {"name": name_key, "channels": f"{node}.{site.channels[0]}"}
    options = {}
    for option in UPSAMPLER_OPTIONS.get(name, {}):
        inner = f"{name.upper()}." if name in ("dysample", "carafe") else ""
        keys[option] = f"{node}.{inner}{option.upper()}"
        options[option] = _get(cfg, keys[option])
    options = check_upsampler_arguments(name, _get(cfg, keys["channels"]), 2, options,
                                        names=keys)
    backbone = _get(cfg, "MODEL.BACKBONE.NAME")
    carafe_layout = node == "MODEL.FPN" and backbone in CARAFE_FPN_BACKBONES
    if carafe_layout and cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ValueError(f"MODEL.FPN.FUSE_TYPE must be 'sum' for {backbone} (the CARAFE-layout "
                         f"FPN adds the upsampled map), got {cfg.MODEL.FPN.FUSE_TYPE!r}")
    return name, options


def _target(node):
    target = node.get("_target_")
    return locate(target) if isinstance(target, str) else target


def _check_lazy_site(site: Site, node: DictConfig, path: str) -> None:
    """The upsamplers of a LazyCall node of one of `site`'s targets, by
    `check_upsampler_arguments`, with the node's keys in its messages. Where the node names
    its upsampler (the FPNs), each of its keys that the constructor does not name is an
    option of that upsampler; elsewhere, the node's keys among its upsampler's options."""
    name = site.upsampler or node.get("upsampler", "dysample")
    if site.upsampler is None:
        named = [p.name for p in inspect.signature(_target(node).__init__).parameters.values()
                 if p.kind is not p.VAR_KEYWORD]
        options = {k: node[k] for k in node if k != "_target_" and k not in named}
    else:
        options = {k: node[k] for k in UPSAMPLER_OPTIONS[name] if k in node}
    keys = {k: f"{path}.{k}" for k in (*options, *UPSAMPLER_OPTIONS.get(name, {}))}
    keys["name"] = f"{path}.upsampler"
    if callable(site.channels[1]):
        keys["channels"] = f"{path}'s DySample channels"
        channels = site.channels[1](node)
    else:
        keys["channels"] = f"{path}.{site.channels[1]}"
        channels = [node[site.channels[1]]]
    for count in channels:
        check_upsampler_arguments(name, count, 2, options, names=keys)


def _check_lazy_config(cfg, path: str) -> None:
    if isinstance(cfg, DictConfig):
        target = getattr(_target(cfg), "__name__", None) if "_target_" in cfg else None
        for site in SITES:
            if target in site.lazy:
                _check_lazy_site(site, cfg, path or target)
        keys = [k for k in cfg if not OmegaConf.is_interpolation(cfg, k)]
    elif isinstance(cfg, ListConfig):
        keys = [i for i in range(len(cfg)) if not OmegaConf.is_interpolation(cfg, i)]
    else:
        return
    for key in keys:
        if isinstance(cfg[key], (DictConfig, ListConfig)):
            _check_lazy_config(cfg[key], f"{path}.{key}" if path else str(key))


def check_dysample_config(cfg) -> None:
    """
    Validate the upsampler arguments of every site (`SITES`) that ``cfg`` builds, before any
    model is built or any file written, raising ValueError naming the key the user wrote and
    the allowed values (`check_upsampler_arguments`' messages):

    - a YACS CfgNode (with the DySample keys): the sites that its names select
      (`upsampler_from_config`); unused sites' keys never fail;
    - a lazy config, or any node of one: every LazyCall node of a site's target, named by
      its key path (``model.backbone.groups``).
    """
    if isinstance(cfg, (DictConfig, ListConfig)):
        _check_lazy_config(cfg, cfg._get_full_key(None) or "")
        return
    for site in SITES:
        if site.yacs and all(_get(cfg, key) in names for key, names in site.selected_by.items()):
            upsampler_from_config(cfg, site.yacs)
