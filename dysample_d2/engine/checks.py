"""Checks of user input made before any model is built or any step is trained."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

_HINT = (
    "Detectron2 finds builtin datasets under $DETECTRON2_DATASETS (now {root!r}); make a "
    "small COCO-layout dataset there with `python scripts/make_coco_dataset.py --root {root}`"
    " or point DETECTRON2_DATASETS at your COCO copy."
)


def check_config_file(path: str) -> None:
    if not path:
        raise ValueError("--config-file is required (e.g. configs/COCO-Detection/"
                         "faster_rcnn_R_50_DySample_FPN_1x.yaml)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config-file {path!r} does not exist")


def check_datasets(names, key: str = "DATASETS.TRAIN/TEST") -> None:
    """Each dataset name (from the config's ``key``) is registered and the files its
    metadata names exist."""
    registered = set(DatasetCatalog.list())
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name in names:
        if name not in registered:
            raise KeyError(
                f"dataset {name!r} ({key}) is not registered; registered "
                f"COCO names include: {sorted(n for n in registered if n.startswith('coco_2017'))}"
            )
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root"):
            path = getattr(meta, key, None) if key in meta.as_dict() else None
            if path and not os.path.exists(path):
                raise FileNotFoundError(
                    f"dataset {name!r}: {key} {path!r} does not exist. " + _HINT.format(root=root)
                )


def check_weights(path: str, required: bool, key: str = "MODEL.WEIGHTS") -> None:
    """The checkpoint the config's ``key`` names must exist if it is a local file (and be
    given when ``required``). Lazy config keys (lower case) are set as key=value."""
    if not path:
        if required:
            option = f"{key}=" if key.islower() else f"{key} "
            raise ValueError(f"--eval-only needs a checkpoint: add {option}path/to/model.pth")
        return
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: checkpoint file {path!r} does not exist")
