"""
LazyConfig helpers: DySample in the upsampling steps of Detectron2's lazy models.

A lazy config of this project loads Detectron2's own config and changes only the
upsampler::

    from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

    dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
    )
    model.backbone = to_dysample(model.backbone, style="lp", groups=4)

The node keeps every other argument (bottom-up network, norm, top block, interpolations),
so command-line overrides such as ``model.backbone.groups=8`` address the same keys as
``model.backbone.out_channels``.
"""
from detectron2.modeling import SimpleFeaturePyramid
from detectron2.modeling.backbone import FPN
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..layers import (DEFAULTS, UPSAMPLER_OPTIONS, check_dysample_arguments,
                      check_upsampler_arguments)
from .carafe_fpn import CarafeFPN
from .fpn import DySampleFPN
from .semantic_seg import DySampleSemSegFPNHead
from .vitdet import DySampleSimpleFeaturePyramid

__all__ = [
    "DYSAMPLE_TWINS",
    "LAZY_LAYOUT",
    "check_lazy_dysample_arguments",
    "model_zoo_recipe",
    "to_carafe_fpn",
    "to_dysample",
]

# The top-level keys of Detectron2's lazy training configs, in the order model_zoo_recipe
# returns them.
LAZY_LAYOUT = ("dataloader", "lr_multiplier", "model", "optimizer", "train")

# Detectron2's upsampling modules -> their DySample twins (the same constructor arguments
# plus DySample's).
DYSAMPLE_TWINS = {
    FPN: DySampleFPN,
    SimpleFeaturePyramid: DySampleSimpleFeaturePyramid,
    SemSegFPNHead: DySampleSemSegFPNHead,
}


def model_zoo_recipe(config_path: str):
    """
    Detectron2's model-zoo lazy config ``config_path`` (relative to its ``configs/``) as the
    objects of the lazy layout, in the order of :data:`LAZY_LAYOUT`.
    """
    from detectron2 import model_zoo  # imported when used: it warns about pkg_resources

    cfg = model_zoo.get_config(config_path)
    return tuple(cfg[key] for key in LAZY_LAYOUT)


def _target(node):
    target = node.get("_target_")
    return locate(target) if isinstance(target, str) else target


def to_dysample(node, **dysample_args):
    """
    Turn a ``LazyCall(FPN)``, ``LazyCall(SimpleFeaturePyramid)`` (ViTDet) or
    ``LazyCall(SemSegFPNHead)`` (Panoptic FPN's semantic branch) node into its DySample twin
    (:data:`DYSAMPLE_TWINS`) in place, keeping all its other arguments; returns the node.
    Checkpoints of the original model load with only the DySample parameters missing.

    Args:
        dysample_args: style, groups, dyscope, scope_bias, as for :class:`DySample`
            (defaults :data:`dysample_d2.layers.DEFAULTS`).
    """
    unknown = sorted(set(dysample_args) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"to_dysample: unknown DySample arguments {unknown}; "
                        f"allowed: {list(DEFAULTS)}")
    current = _target(node)
    base = next((b for b in DYSAMPLE_TWINS if isinstance(current, type)
                 and issubclass(current, b)), None)
    if base is None:
        name = getattr(current, "__name__", current)
        raise TypeError(
            f"{node._get_full_key(None) or 'the node'} is a LazyCall({name}) node; expected "
            f"a LazyCall node of one of {[b.__name__ for b in DYSAMPLE_TWINS]}"
        )
    node._target_ = DYSAMPLE_TWINS[base]
    node.update({**DEFAULTS, **dysample_args})
    check_lazy_dysample_arguments(node)
    return node


# The arguments of a LazyCall(FPN) node that CarafeFPN takes as they are; its own top level
# replaces top_block, and it sums only ("sum" fuse type, no square padding).
_CARAFE_FPN_KEPT = ("bottom_up", "in_features", "out_channels", "norm")


def to_carafe_fpn(node, upsampler="dysample", **options):
    """
    Turn a ``LazyCall(FPN)`` node into a ``LazyCall(CarafeFPN)`` node in place (the
    CARAFE-layout FPN of the DySample authors' R-CNN models), keeping its bottom-up network,
    in_features, out_channels and norm; returns the node. Its top_block goes: CarafeFPN's
    P6 is its own stride-2 lateral.

    Args:
        upsampler: one of :data:`dysample_d2.layers.UPSAMPLERS`.
        options: that upsampler's options (:data:`dysample_d2.layers.UPSAMPLER_OPTIONS`):
            for "dysample" style, groups, dyscope, scope_bias (node keys, as
            :func:`to_dysample` sets them), for the others the node's ``upsampler_options``
            (e.g. ``up_kernel=5`` for "carafe").
    """
    allowed = UPSAMPLER_OPTIONS.get(upsampler, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"to_carafe_fpn: unknown arguments {unknown} of upsampler "
                        f"{upsampler!r}; allowed: {list(allowed)}")
    current = _target(node)
    if not (isinstance(current, type) and issubclass(current, FPN)):
        name = getattr(current, "__name__", current)
        raise TypeError(f"{node._get_full_key(None) or 'the node'} is a LazyCall({name}) node; "
                        "expected a LazyCall(FPN) node")
    if node.get("fuse_type", "sum") != "sum":
        raise ValueError(f"to_carafe_fpn: fuse_type must be 'sum', got {node.fuse_type!r}")
    kept = {key: node[key] for key in _CARAFE_FPN_KEPT if key in node}
    for key in list(node.keys()):
        del node[key]
    node._target_ = CarafeFPN
    node.update({**kept, "upsampler": upsampler})
    if upsampler == "dysample":
        node.update({**DEFAULTS, **options})
    else:
        node.upsampler_options = options
    check_lazy_dysample_arguments(node)
    return node


def _pyramid_channels(node):
    net = node.get("net")
    if isinstance(net, DictConfig) and "embed_dim" in net:  # ViT: features of embed_dim
        return DySampleSimpleFeaturePyramid.upsampler_channels(net.embed_dim, node.scale_factors)
    return []


# LazyCall targets that build DySample modules from DySample's arguments -> the channels of
# those modules as the node tells them (an empty list where only the built network knows).
DYSAMPLE_TARGETS = {
    DySampleSimpleFeaturePyramid: _pyramid_channels,
    DySampleSemSegFPNHead: lambda node: [node.conv_dims],
}


def _check_lazy_fpn_upsampler(node, prefix):
    """The upsampler of a LazyCall(CarafeFPN) / LazyCall(DySampleFPN) node, by
    `check_upsampler_arguments`: DySample's arguments are node keys, the others' under
    ``upsampler_options``."""
    name = node.get("upsampler", "dysample")
    options = dict(node.get("upsampler_options") or {})
    names = {"name": f"{prefix}.upsampler", "channels": f"{prefix}.out_channels",
             **{k: f"{prefix}.upsampler_options.{k}" for k in options},
             **{k: f"{prefix}.{k}" for k in DEFAULTS if k not in options}}
    if name == "dysample":
        options = {**{k: node.get(k, default) for k, default in DEFAULTS.items()}, **options}
    check_upsampler_arguments(name, node.out_channels, 2, options, names=names)


def check_lazy_dysample_arguments(cfg, path=None) -> None:
    """
    Check the DySample arguments of every node under ``cfg`` (a lazy config or any node of
    one) whose target is in :data:`DYSAMPLE_TARGETS`, without building the model, so that a
    bad value, in the file or in a ``key=value`` override, fails early with the node's key
    path, the argument and its allowed values (DySample's own checks).
    """
    if path is None:
        path = cfg._get_full_key(None) if isinstance(cfg, (DictConfig, ListConfig)) else ""
    if isinstance(cfg, DictConfig):
        target = _target(cfg) if "_target_" in cfg else None
        if target in (CarafeFPN, DySampleFPN):
            _check_lazy_fpn_upsampler(cfg, path or target.__name__)
        if target in DYSAMPLE_TARGETS:
            args = {k: cfg.get(k, default) for k, default in DEFAULTS.items()}
            prefix = path or target.__name__
            names = {k: f"{prefix}.{k}" for k in DEFAULTS}
            for channels in DYSAMPLE_TARGETS[target](cfg):
                names["in_channels"] = f"{prefix}'s DySample channels"
                check_dysample_arguments(channels, 2, names=names, **args)
        keys = [k for k in cfg if not OmegaConf.is_interpolation(cfg, k)]
    elif isinstance(cfg, ListConfig):
        keys = [i for i in range(len(cfg)) if not OmegaConf.is_interpolation(cfg, i)]
    else:
        return
    for key in keys:
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            check_lazy_dysample_arguments(value, f"{path}.{key}" if path else str(key))
