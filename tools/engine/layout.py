"""Where a YACS (.yaml) and a lazy (.py) config keep what a run reads: the one difference
between training or evaluating with either, as data (:class:`ConfigLayout`)."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig, OmegaConf

from .evaluation import evaluate_lazy
from .lazy_training import build_lazy_model, train_lazy
from .yacs_training import evaluate_yacs, train_yacs

_MISSING = object()


@dataclass(frozen=True)
class ConfigLayout:
    """The keys of one config system, and the functions that build, evaluate and train its
    models (each called as ``f(cfg, ...)``)."""

    weights: str
    output_dir: str
    seed: str
    cudnn_benchmark: str
    device: str
    amp: str
    num_workers: str  # "*" stands for every data loader
    train_datasets: str
    test_datasets: str
    datasets: str  # how messages name the train and test datasets together
    # the nodes whose ``num_classes`` keys the model reads, by the value of ``architecture``
    class_count_nodes: Dict[str, Tuple[str, ...]]
    architecture: Optional[str]
    needed_for_evaluation: Tuple[str, ...]
    needed_for_training: Tuple[str, ...]
    build_model: Callable
    evaluate: Callable
    train: Callable


YACS_LAYOUT = ConfigLayout(
    weights="MODEL.WEIGHTS",
    output_dir="OUTPUT_DIR",
    seed="SEED",
    cudnn_benchmark="CUDNN_BENCHMARK",
    device="MODEL.DEVICE",
    amp="SOLVER.AMP.ENABLED",
    num_workers="DATALOADER.NUM_WORKERS",
    train_datasets="DATASETS.TRAIN",
    test_datasets="DATASETS.TEST",
    datasets="DATASETS.TRAIN/TEST",
    class_count_nodes={
        "GeneralizedRCNN": ("MODEL.ROI_HEADS",),
        "RetinaNet": ("MODEL.RETINANET",),
        "SemanticSegmentor": ("MODEL.SEM_SEG_HEAD",),
        "PanopticFPN": ("MODEL.ROI_HEADS", "MODEL.SEM_SEG_HEAD"),
    },
    architecture="MODEL.META_ARCHITECTURE",
    needed_for_evaluation=(),
    needed_for_training=(),
    build_model=build_model,
    evaluate=evaluate_yacs,
    train=train_yacs,
)

# What lazy training and evaluation read (Detectron2's configs/common/train.py and data/*.py)
_LAZY_EVALUATION = ("model", "train", "dataloader.test", "dataloader.evaluator")

LAZY_LAYOUT = ConfigLayout(
    weights="train.init_checkpoint",
    output_dir="train.output_dir",
    seed="train.seed",
    cudnn_benchmark="train.cudnn_benchmark",
    device="train.device",
    amp="train.amp.enabled",
    num_workers="dataloader.*.num_workers",
    train_datasets="dataloader.train.dataset.names",
    test_datasets="dataloader.test.dataset.names",
    datasets="dataloader.{train,test}.dataset.names",
    class_count_nodes={"": ("model",)},  # every num_classes under model is read
    architecture=None,
    needed_for_evaluation=_LAZY_EVALUATION,
    needed_for_training=_LAZY_EVALUATION + ("dataloader.train", "optimizer", "lr_multiplier"),
    build_model=build_lazy_model,
    evaluate=evaluate_lazy,
    train=train_lazy,
)


def layout_of(cfg) -> ConfigLayout:
    return YACS_LAYOUT if isinstance(cfg, CfgNode) else LAZY_LAYOUT


def get_key(cfg, key: str, default=_MISSING):
    """The value of the dotted ``key`` in ``cfg`` (a CfgNode or a lazy config), or
    ``default`` where a part of it is missing (KeyError without a default)."""
    node = cfg
    for part in key.split("."):
        if not _is_node(node) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_key(cfg, key: str, value) -> None:
    parent, _, name = key.rpartition(".")
    get_key(cfg, parent)[name] = value


def expand_key(cfg, key: str):
    """The keys of ``cfg`` that ``key`` names, its "*" standing for any child."""
    head, star, tail = key.partition(".*.")
    if not star:
        return [key] if get_key(cfg, key, None) is not None else []
    parent = get_key(cfg, head, None)
    names = [name for name in parent if _is_node(parent[name])] if _is_node(parent) else []
    return [k for name in names for k in expand_key(cfg, f"{head}.{name}.{tail}")]


def _is_node(value) -> bool:
    return isinstance(value, (dict, DictConfig))  # a CfgNode is a dict


def _children(node):
    """(name, value) of the children of a config node, a lazy config's interpolations
    (``${..num_classes}``: the key they point to is the one to set) and ``???`` left out."""
    if isinstance(node, DictConfig):
        return [(k, node[k]) for k in node
                if not OmegaConf.is_missing(node, k) and not OmegaConf.is_interpolation(node, k)]
    if isinstance(node, ListConfig):
        return list(enumerate(node))
    return list(node.items()) if isinstance(node, dict) else []


def _class_counts(node, path):
    for name, value in _children(node):
        key = f"{path}.{name}"
        if str(name).lower() == "num_classes" and isinstance(value, int) \
                and not isinstance(value, bool):
            yield key, value, "stuff_classes" if "sem_seg_head" in key.lower() else "thing_classes"
        yield from _class_counts(value, key)


def class_counts(cfg):
    """(key, value, dataset metadata it counts) of each class count the model reads: every
    int ``num_classes`` key under the layout's class-count nodes, stuff classes under a
    semantic segmentation head, thing classes elsewhere."""
    layout = layout_of(cfg)
    architecture = get_key(cfg, layout.architecture) if layout.architecture else ""
    return [count for root in layout.class_count_nodes.get(architecture, ())
            for count in _class_counts(get_key(cfg, root), root)]
