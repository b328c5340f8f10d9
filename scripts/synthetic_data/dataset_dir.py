"""
Writing a generated dataset directory so that it is reused when complete, replaced only when
asked, and never half-written: files go to a temporary directory renamed into place last.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Dict, Iterable, Tuple

import numpy as np

__all__ = ["MANIFEST_NAME", "checked_settings", "read_manifest", "write_dataset_dir"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "synthetic_manifest.json"


def read_manifest(dataset_dir: str):
    """The manifest dict of a generated dataset; None if `dataset_dir` has none (or a bad one)."""
    try:
        with open(os.path.join(dataset_dir, MANIFEST_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def checked_settings(train_images, val_images, size, seed, max_train_images, **extra) -> dict:
    """
    The generator arguments as the manifest records them (plus `extra`, e.g. the version and
    classes). Raises ValueError naming the first bad argument.
    """
    for name, value, lo, hi in (
        ("train_images", train_images, 1, max_train_images),
        ("val_images", val_images, 1, 10**6),
        ("size", size, 64, 4096),
        ("seed", seed, 0, 2**63 - 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return dict(train_images=int(train_images), val_images=int(val_images), size=int(size),
                seed=int(seed), **extra)


def _file_counts(dataset_dir: str, data_dirs: Iterable[str]) -> Dict[str, int]:
    """Number of files in each data directory of `dataset_dir` (missing ones count -1)."""
    paths = {d: os.path.join(dataset_dir, d) for d in data_dirs}
    return {d: len(os.listdir(p)) if os.path.isdir(p) else -1 for d, p in paths.items()}


def write_dataset_dir(
    root: str,
    name: str,
    settings: dict,
    write: Callable[[str], None],
    data_dirs: Iterable[str],
    generator: str,
    force: bool = False,
) -> Tuple[str, bool]:
    """
    Write (or reuse) the dataset directory ``root/name``.

    Args:
        settings: the generator's arguments; a dataset made with the same ones is reused.
        write: writes and validates every file of the dataset into the directory it is given.
        data_dirs: the subdirectories holding the files; their file counts tell a complete
            dataset.
        generator: the writing module's name, recorded in the manifest.
        force: replace a generated dataset even if it was made with the same settings.

    A ``root/name`` without a manifest (not generated, e.g. the real dataset) is never
    replaced; one with other settings only with `force`.

    Returns:
        (dataset_dir, reused)
    """
    data_dirs = list(data_dirs)
    root = os.path.abspath(os.path.expanduser(root))
    dataset_dir = os.path.join(root, name)
    if os.path.lexists(dataset_dir):
        manifest = read_manifest(dataset_dir)
        if manifest is None:
            raise FileExistsError(
                f"{dataset_dir} exists but has no {MANIFEST_NAME}: it was not written by this "
                "generator (a real dataset or another one is there); remove it yourself "
                "or use another root"
            )
        same = manifest.get("settings") == settings
        complete = manifest.get("files") == _file_counts(dataset_dir, data_dirs)
        if same and complete and not force:
            logger.info("Reusing synthetic dataset at %s (same arguments).", dataset_dir)
            return dataset_dir, True
        if not same and not force:
            raise FileExistsError(
                f"{dataset_dir} holds a synthetic dataset made with other arguments "
                f"{manifest.get('settings')}; pass force=True (--force) to replace it"
            )

    os.makedirs(root, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{name}-synthetic-tmp-", dir=root)
    old_dir = None
    try:
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; it becomes root/name
        write(tmp_dir)
        files = _file_counts(tmp_dir, data_dirs)
        manifest = {"generator": generator, "settings": settings, "files": files}
        with open(os.path.join(tmp_dir, MANIFEST_NAME), "w") as f:  # last: marks completion
            json.dump(manifest, f, indent=1)
        if os.path.lexists(dataset_dir):  # ours (checked above): move aside, then swap in
            old_dir = tempfile.mkdtemp(prefix=f".{name}-synthetic-old-", dir=root)
            os.rename(dataset_dir, os.path.join(old_dir, name))
        os.rename(tmp_dir, dataset_dir)
    except BaseException:
        if old_dir is not None and not os.path.lexists(dataset_dir):  # put the old one back
            os.rename(os.path.join(old_dir, name), dataset_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if old_dir is not None and os.path.lexists(dataset_dir):
            shutil.rmtree(old_dir, ignore_errors=True)
    logger.info("Wrote synthetic dataset to %s.", dataset_dir)
    return dataset_dir, False
