"""
LazyConfig helpers: DySample in the upsampling steps of Detectron2's lazy models.

A lazy config of this project loads Detectron2's own config and changes only the
upsampler::

    from dysample_d2.modeling.lazy import dysample_fpn, model_zoo_recipe

    dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
    )
    model.backbone = dysample_fpn(model.backbone, style="lp", groups=4)

The node keeps every other argument (bottom-up network, norm, top block, interpolations),
so command-line overrides such as ``model.backbone.groups=8`` address the same keys as
``model.backbone.out_channels``.
"""
from detectron2 import model_zoo
from detectron2.modeling import SimpleFeaturePyramid
from detectron2.modeling.backbone import FPN
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..layers import DySample
from .fpn import DySampleFPN
from .semantic_seg import DySampleSemSegFPNHead
from .vitdet import DySampleSimpleFeaturePyramid

__all__ = [
    "DYSAMPLE_TARGETS",
    "LAZY_LAYOUT",
    "check_dysample_arguments",
    "dysample_fpn",
    "dysample_simple_feature_pyramid",
    "dysample_sem_seg_head",
    "model_zoo_recipe",
]

# DySample's arguments and defaults, as the DYSAMPLE_TARGETS take them.
DYSAMPLE_DEFAULTS = dict(style="lp", groups=4, dyscope=False, scope_bias=False)

# The top-level keys of Detectron2's lazy training configs, in the order model_zoo_recipe
# returns them.
LAZY_LAYOUT = ("dataloader", "lr_multiplier", "model", "optimizer", "train")


def model_zoo_recipe(config_path: str):
    """
    Detectron2's model-zoo lazy config ``config_path`` (relative to its ``configs/``) as the
    objects of the lazy layout, in the order of :data:`LAZY_LAYOUT`.
    """
    cfg = model_zoo.get_config(config_path)
    return tuple(cfg[key] for key in LAZY_LAYOUT)


def _target(node):
    target = node.get("_target_")
    return locate(target) if isinstance(target, str) else target


def _convert(node, base, target, dysample_args):
    """Turn a LazyCall(base) node into LazyCall(target) in place, adding DySample's args."""
    current = _target(node)
    if not (isinstance(current, type) and issubclass(current, base)):
        name = getattr(current, "__name__", current)
        raise TypeError(
            f"{node._get_full_key(None) or 'the node'} is a LazyCall({name}) node; "
            f"expected a LazyCall({base.__name__})(...) node"
        )
    node._target_ = target
    node.update(dysample_args)
    check_dysample_arguments(node)
    return node


def dysample_fpn(fpn, style="lp", groups=4, dyscope=False, scope_bias=False):
    """
    Turn a ``LazyCall(FPN)(...)`` node (as in Detectron2's ``common/models/*.py``) into a
    :class:`DySampleFPN` node in place, keeping all its other arguments; returns the node.
    Nearest-FPN checkpoints of the model load with only the ``fpn_upsample*`` keys missing.
    """
    args = dict(style=style, groups=groups, dyscope=dyscope, scope_bias=scope_bias)
    return _convert(fpn, FPN, DySampleFPN, args)


def dysample_simple_feature_pyramid(sfp, style="lp", groups=4, dyscope=False, scope_bias=False):
    """
    Turn a ``LazyCall(SimpleFeaturePyramid)(...)`` node (ViTDet's, as in Detectron2's
    ``common/models/mask_rcnn_vitdet.py``) into a :class:`DySampleSimpleFeaturePyramid` node
    in place, keeping all its other arguments; returns the node.
    """
    args = dict(style=style, groups=groups, dyscope=dyscope, scope_bias=scope_bias)
    return _convert(sfp, SimpleFeaturePyramid, DySampleSimpleFeaturePyramid, args)


def dysample_sem_seg_head(head, style="lp", groups=4, dyscope=False, scope_bias=False):
    """
    Turn a ``LazyCall(SemSegFPNHead)(...)`` node (Panoptic FPN's semantic branch, as in
    Detectron2's ``common/models/panoptic_fpn.py``) into a :class:`DySampleSemSegFPNHead`
    node in place, keeping all its other arguments; returns the node.
    """
    args = dict(style=style, groups=groups, dyscope=dyscope, scope_bias=scope_bias)
    return _convert(head, SemSegFPNHead, DySampleSemSegFPNHead, args)


def _pyramid_channels(node):
    net = node.get("net")
    if isinstance(net, DictConfig) and "embed_dim" in net:  # ViT: features of embed_dim
        return DySampleSimpleFeaturePyramid.upsampler_channels(net.embed_dim, node.scale_factors)
    return []


# LazyCall targets that build DySample modules from DySample's arguments -> the channels of
# those modules as the node tells them (an empty list where only the built network knows).
DYSAMPLE_TARGETS = {
    DySampleFPN: lambda node: [node.out_channels],
    DySampleSimpleFeaturePyramid: _pyramid_channels,
    DySampleSemSegFPNHead: lambda node: [node.conv_dims],
}


def check_dysample_arguments(cfg, path=None) -> None:
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
        if target in DYSAMPLE_TARGETS:
            args = {k: cfg.get(k, default) for k, default in DYSAMPLE_DEFAULTS.items()}
            for channels in DYSAMPLE_TARGETS[target](cfg):
                try:
                    DySample(channels, 2, **args)  # a 1x1 conv: its checks, nothing to build
                except ValueError as e:
                    raise ValueError(f"{path or target.__name__}: {e}") from None
        keys = [k for k in cfg if not OmegaConf.is_interpolation(cfg, k)]
    elif isinstance(cfg, ListConfig):
        keys = [i for i in range(len(cfg)) if not OmegaConf.is_interpolation(cfg, i)]
    else:
        return
    for key in keys:
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            check_dysample_arguments(value, f"{path}.{key}" if path else str(key))
