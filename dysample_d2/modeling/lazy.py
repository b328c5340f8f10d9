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

from ..config import check_dysample_config
from ..layers import UPSAMPLER_OPTIONS
from .carafe_fpn import CarafeFPN
from .fpn import DySampleFPN
from .semantic_seg import DySampleSemSegFPNHead
from .vitdet import DySampleSimpleFeaturePyramid

__all__ = [
    "DYSAMPLE_TWINS",
    "LAZY_LAYOUT",
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


def to_dysample(node, **dysample_options):
    """
    Turn a ``LazyCall(FPN)``, ``LazyCall(SimpleFeaturePyramid)`` (ViTDet) or
    ``LazyCall(SemSegFPNHead)`` (Panoptic FPN's semantic branch) node into its DySample twin
    (:data:`DYSAMPLE_TWINS`) in place, keeping all its other arguments; returns the node.
    Checkpoints of the original model load with only the DySample parameters missing.

    Args:
        dysample_options: style, groups, dyscope, scope_bias, as for :class:`DySample` (the
            node gets all four, DySample's defaults where not given).
    """
    defaults = UPSAMPLER_OPTIONS["dysample"]
    unknown = sorted(set(dysample_options) - set(defaults))
    if unknown:
        raise TypeError(f"to_dysample: unknown DySample arguments {unknown}; "
                        f"allowed: {list(defaults)}")
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
    node.update({**defaults, **dysample_options})
    check_dysample_config(node)
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
        options: that upsampler's options (:data:`dysample_d2.layers.UPSAMPLER_OPTIONS`),
            e.g. ``groups=8`` for "dysample", ``up_kernel=3`` for "carafe": node keys, all of
            them, the upsampler's defaults where not given.
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
    node.update({**kept, "upsampler": upsampler, **allowed, **options})
    check_dysample_config(node)
    return node
