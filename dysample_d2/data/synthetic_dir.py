"""
Writing a generated dataset directory so that it is reused when complete, replaced only when
asked, and never half-written: files go to a temporary directory renamed into place last.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Dict, Tuple

__all__ = ["MANIFEST_NAME", "read_manifest", "write_dataset_dir"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "synthetic_manifest.json"


def read_manifest(dataset_dir: str):
    """The manifest dict of a generated dataset, or None if `dataset_dir` has none (or it is bad)."""
    try:
        with open(os.path.join(dataset_dir, MANIFEST_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_dataset_dir(
    root: str,
    name: str,
    settings: dict,
    write: Callable[[str], None],
    file_counts: Callable[[str], Dict[str, int]],
    generator: str,
    force: bool = False,
) -> Tuple[str, bool]:
    """
    Write (or reuse) the dataset directory ``root/name``.

    Args:
        settings: the generator's arguments; a dataset made with the same ones is reused.
        write: writes and validates every file of the dataset into the directory it is given.
        file_counts: directory -> {subdirectory: number of files}, to tell a complete dataset.
        generator: the writing module's name, recorded in the manifest.
        force: replace a generated dataset even if it was made with the same settings.

    A ``root/name`` without a manifest (not generated, e.g. the real dataset) is never
    replaced; one with other settings only with `force`.

    Returns:
        (dataset_dir, reused)
    """
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
        complete = manifest.get("files") == file_counts(dataset_dir)
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
        manifest = {"generator": generator, "settings": settings, "files": file_counts(tmp_dir)}
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
