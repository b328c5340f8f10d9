"""Checks of user input made before any model is built or any step is trained.

Every refusal of user input (a config file, key or value, a dataset, a checkpoint, a lazy
override) raises a :class:`UserInputError`, whose message says what is wrong and how to fix
it: train_net.py prints it as one ``error:`` line, without a traceback. The subclasses are
also ValueError, KeyError or FileNotFoundError, as callers may expect.
"""
import difflib
import functools
import logging
import os
import zipfile

from detectron2.data import DatasetCatalog, MetadataCatalog


class UserInputError(Exception):
    """Input the user can fix (config, options, datasets, checkpoints); the message says how."""

    def __str__(self):  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class UserValueError(UserInputError, ValueError):
    """A value that is not allowed, or a file whose contents cannot be used."""


class UserKeyError(UserInputError, KeyError):
    """A config key, override or dataset name that does not exist."""


class UserFileNotFoundError(UserInputError, FileNotFoundError):
    """A file named by the command line or the config that does not exist."""


_HINT = (
    "Detectron2 finds builtin datasets under $DETECTRON2_DATASETS (now {root!r}); make a "
    "small COCO-layout dataset there with `python scripts/make_coco_dataset.py --root {root}`"
    " or point DETECTRON2_DATASETS at your COCO copy."
)


def check_config_file(path: str) -> None:
    if not path:
        raise UserValueError("--config-file is required (e.g. configs/COCO-Detection/"
                             "faster_rcnn_R_50_DySample_FPN_1x.yaml)")
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"--config-file {path!r} does not exist")


def check_datasets(names, key: str = "DATASETS.TRAIN/TEST") -> None:
    """Each dataset name (from the config's ``key``) is registered and the files its
    metadata names exist."""
    registered = set(DatasetCatalog.list())
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name in names:
        if name not in registered:
            raise UserKeyError(
                f"dataset {name!r} ({key}) is not registered; registered "
                f"COCO names include: {sorted(n for n in registered if n.startswith('coco_2017'))}"
            )
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root"):
            path = getattr(meta, key, None) if key in meta.as_dict() else None
            if path and not os.path.exists(path):
                raise UserFileNotFoundError(
                    f"dataset {name!r}: {key} {path!r} does not exist. " + _HINT.format(root=root)
                )


def is_lazy_key(key: str) -> bool:
    """Whether ``key`` is a lazy config's (lower case, ``train.init_checkpoint``) rather than
    a YACS config's (upper case, ``MODEL.WEIGHTS``)."""
    return key.islower()


def cli_option(key: str, value) -> str:
    """``key`` set to ``value`` as train_net.py's command line takes it: ``key=value`` for
    lazy config keys, ``KEY VALUE`` for YACS keys."""
    return f"{key}={value}" if is_lazy_key(key) else f"{key} {value}"


def _first_sentence(error: Exception) -> str:
    """The first line of ``error``'s message, up to its first full stop."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__


@functools.lru_cache(maxsize=8)
def _unreadable(path: str, size: int, mtime_ns: int):
    """Why the file at ``path`` (of this size and modification time: one read per version
    of the file, however many checks name it) cannot be read, or None. A zip-format .pth
    (torch.save's) must have its directory and every member's checksum intact; other files
    (Detectron2's .pkl, old-style torch files) are loaded as Detectron2 loads them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"member {bad} fails its checksum")
        else:
            import torch
            from detectron2.checkpoint import DetectionCheckpointer

            DetectionCheckpointer(torch.nn.Module())._load_file(path)
    except Exception as e:  # truncated or corrupt: whatever the reader raised
        return _first_sentence(e)
    return None


def _check_readable(path: str, key: str, shown: str) -> None:
    """The checkpoint file ``path`` (named ``shown`` by ``key``) can be read (`_unreadable`)."""
    stat = os.stat(path)
    reason = _unreadable(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if reason is not None:
        raise UserValueError(
            f"{key}: checkpoint file {shown!r} cannot be read (truncated or corrupt: {reason}); "
            f"download or save it again, or set {cli_option(key, 'path/to/model.pth')} to "
            "another file"
        )


def _no_errors(record) -> bool:
    return record.levelno < logging.ERROR


def check_weights(path: str, required: bool, key: str = "MODEL.WEIGHTS") -> str:
    """
    The checkpoint that the config's ``key`` names must be given when ``required``, and
    must be readable: a local file that exists and is not truncated or corrupt, or a URL
    (``detectron2://``, ``https://``) that Detectron2 can download (or has cached) now,
    before anything is written. Lazy config keys are set as key=value in the messages.

    Returns:
        the local path of the checkpoint ('' if none is given).
    """
    if not path:
        if required:
            raise UserValueError(
                f"--eval-only needs a checkpoint: add {cli_option(key, 'path/to/model.pth')}"
            )
        return ""
    if "://" in path:
        from detectron2.utils.file_io import PathManager

        download_log = logging.getLogger("iopath.common.download")
        download_log.addFilter(_no_errors)  # its "Failed to download": the error below says it
        try:
            local = PathManager.get_local_path(path)
        except Exception as e:  # offline, a server refusing, an unknown scheme
            reason, empty = _first_sentence(e), '""'
            norm = ("GN norms, e.g. model.backbone.bottom_up.stem.norm=GN "
                    "model.backbone.bottom_up.stages.norm=GN" if is_lazy_key(key)
                    else "MODEL.RESNETS.NORM GN")
            raise UserValueError(
                f"{key}: cannot download {path!r} ({reason}); to run offline, train from "
                f"scratch with {cli_option(key, empty)} and {norm} (or SyncBN on GPUs; "
                "FrozenBN diverges from scratch), or download the file elsewhere and set "
                f"{cli_option(key, 'path/to/local/file')}"
            ) from e
        finally:
            download_log.removeFilter(_no_errors)
    else:
        local = path
        if not os.path.isfile(local):
            raise UserFileNotFoundError(f"{key}: checkpoint file {path!r} does not exist")
    _check_readable(local, key, path)
    return local


def check_num_classes(num_classes, names) -> None:
    """
    Each ``(key, value, kind)`` of ``num_classes`` (a config key giving a class count, e.g.
    MODEL.ROI_HEADS.NUM_CLASSES, with kind ``thing_classes`` or ``stuff_classes``) equals
    the length of that metadata list of every dataset in ``names`` that has one: a smaller
    count fails mid-training ("Target 11 is out of bounds"), a larger one in evaluation.
    """
    for key, value, kind in num_classes:
        for name in names:
            classes = MetadataCatalog.get(name).get(kind)
            if classes is not None and value != len(classes):
                raise UserValueError(
                    f"{key} is {value} but dataset {name!r} has {len(classes)} {kind}: "
                    f"set {cli_option(key, len(classes))}"
                )


def closest_key(key: str, valid_keys) -> str:
    """' (did you mean X?)' for the valid key most like ``key``, or '' if none is close."""
    valid_keys = list(valid_keys)
    # Compare whole dotted names, and also the last component among the keys that share
    # key's parent (a typo in the last component is the usual case).
    parent = key.rpartition(".")[0]
    siblings = [k for k in valid_keys if k.rpartition(".")[0] == parent]
    for candidates in (siblings, valid_keys):
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if match:
            return f" (did you mean {match[0]}?)"
    return ""
