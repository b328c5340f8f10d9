"""
Generator of a small synthetic dataset in the ADE20K (SceneParsing, 150 classes) layout that
Detectron2's builtin names ade20k_sem_seg_{train,val} read from
``$DETECTRON2_DATASETS/ADEChallengeData2016``::

    ADEChallengeData2016/
      images/{training,validation}/ADE_{train,val}_00000001.jpg     RGB JPEG
      annotations_detectron2/{training,validation}/ADE_..._00000001.png
                                   uint8 labels 0..149 (ADE20K_SEM_SEG_CATEGORIES), 255 ignored
      synthetic_manifest.json      written last: arguments and file counts

The label PNGs are what Detectron2's ``datasets/prepare_ade20k_sem_seg.py`` writes (ADE20K's
label minus 1, its "other" 0 becoming 255). Scenes are those of the COCO generator, each of its
categories labelled with the ADE20K class of the same thing.
"""

import os
from typing import Dict, Iterable, Tuple

import numpy as np
from PIL import Image

from .check import DatasetValidationError
from .dataset_dir import checked_settings, write_dataset_dir
from .draw import coco_categories, render_scene

__all__ = ["generate_synthetic_ade20k", "validate_ade20k_dir", "ADE20K_DIR", "IGNORE_LABEL"]

ADE20K_DIR = "ADEChallengeData2016"
GENERATOR_VERSION = 1
IGNORE_LABEL = 255
# split directory -> (file name prefix, seed stream; the COCO generator uses streams 0 and 1)
SPLITS = {"training": ("ADE_train", 2), "validation": ("ADE_val", 3)}
MAX_TRAIN_IMAGES = 10**8 - 1  # file names number images with 8 digits
# COCO category of the drawn scenes -> ADE20K class name (Detectron2's ADE20K_SEM_SEG_CATEGORIES)
ADE20K_CLASS_OF = {
    "sky-other-merged": "sky",
    "wall-other-merged": "wall",
    "grass-merged": "grass",
    "road": "road, route",
    "person": "person",
    "car": "car",
    "stop sign": "signboard, sign",
    "dog": "animal",
    "sports ball": "ball",
}


def ade20k_label_map() -> Dict[int, int]:
    """COCO category id of the drawn scenes -> ADE20K label (0..149); void (0) -> 255."""
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    names = {c["name"]: c["id"] for c in coco_categories()}
    label_map = {
        names[coco]: ADE20K_SEM_SEG_CATEGORIES.index(ade) for coco, ade in ADE20K_CLASS_OF.items()
    }
    label_map[0] = IGNORE_LABEL
    return label_map


def _write_split(ade_dir: str, split: str, count: int, size: int, seed: int) -> None:
    prefix, stream = SPLITS[split]
    image_dir = os.path.join(ade_dir, "images", split)
    label_dir = os.path.join(ade_dir, "annotations_detectron2", split)
    os.makedirs(image_dir)
    os.makedirs(label_dir)
    label_map = ade20k_label_map()
    lut = np.full(max(label_map) + 1, IGNORE_LABEL, np.uint8)
    for coco_id, label in label_map.items():
        lut[coco_id] = label
    for i in range(count):
        rng = np.random.default_rng([seed, stream, i])  # per-image stream: order independent
        image, stuff, objects = render_scene(rng, size)
        labels = lut[stuff]
        for obj in objects:
            labels[obj["mask"]] = lut[obj["category_id"]]
        stem = f"{prefix}_{i + 1:08d}"
        Image.fromarray(image).save(os.path.join(image_dir, stem + ".jpg"), quality=92)
        Image.fromarray(labels).save(os.path.join(label_dir, stem + ".png"))


def validate_ade20k_dir(ade_dir: str, splits: Iterable[str] = tuple(SPLITS)) -> None:
    """
    Every image of `splits` has a label PNG of its size (uint8, values 0..149 or 255) and
    vice versa. Raises DatasetValidationError naming the file and the problem.
    """
    allowed = set(range(150)) | {IGNORE_LABEL}
    for split in splits:
        image_dir = os.path.join(ade_dir, "images", split)
        label_dir = os.path.join(ade_dir, "annotations_detectron2", split)
        images = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir))
        labels = sorted(os.path.splitext(f)[0] for f in os.listdir(label_dir))
        if not images or images != labels:
            raise DatasetValidationError(f"{label_dir}: label PNGs do not match {image_dir}")
        for stem in images:
            png = os.path.join(label_dir, stem + ".png")
            with Image.open(os.path.join(image_dir, stem + ".jpg")) as im:
                mode, size = im.mode, im.size
            with Image.open(png) as lab:
                label_mode, label_size, values = lab.mode, lab.size, np.unique(np.asarray(lab))
            if mode != "RGB" or label_mode != "L" or size != label_size:
                raise DatasetValidationError(
                    f"{png}: {label_mode} {label_size} for a {mode} {size} image"
                )
            if not set(values.tolist()) <= allowed:
                raise DatasetValidationError(f"{png}: labels {values.tolist()} not in 0..149, 255")


def generate_synthetic_ade20k(
    root: str,
    train_images: int = 64,
    val_images: int = 16,
    size: int = 256,
    seed: int = 0,
    force: bool = False,
) -> Tuple[str, bool]:
    """
    Write (or reuse) a synthetic ADE20K dataset at ``root/ADEChallengeData2016``, as
    :func:`generate_synthetic_coco` does for COCO (same arguments, reuse and refusal rules).

    Returns:
        (ade_dir, reused): the dataset directory and whether an existing one was reused.
    """
    settings = checked_settings(train_images, val_images, size, seed, MAX_TRAIN_IMAGES,
                                version=GENERATOR_VERSION, classes=ADE20K_CLASS_OF)

    def write(ade_dir):
        _write_split(ade_dir, "training", train_images, size, seed)
        _write_split(ade_dir, "validation", val_images, size, seed)
        validate_ade20k_dir(ade_dir)

    kinds = ("images", "annotations_detectron2")
    data_dirs = [os.path.join(kind, split) for kind in kinds for split in SPLITS]
    return write_dataset_dir(root, ADE20K_DIR, settings, write, data_dirs, __name__, force)
