import logging
import os
import tempfile
from collections import defaultdict

from detectron2.checkpoint import DetectionCheckpointer

from .checks import UserInputError, check_weights, is_lazy_key


class CheckpointMismatchError(UserInputError, RuntimeError):
    """A checkpoint whose tensors do not cover the model exactly."""


class AtomicFile:
    """A file opened for writing at a temporary name next to ``path``, renamed onto ``path``
    when its ``with`` block ends without an exception and removed when one is raised."""

    def __init__(self, path: str, mode: str):
        self._path = path
        fd, self._tmp_path = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}."
        )
        # mkstemp creates the file readable by its owner only: give it open()'s permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp_path, 0o666 & ~umask)
        self._file = os.fdopen(fd, mode)

    def __getattr__(self, name):  # write, flush, tell, ... of the temporary file
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp_path, self._path)
        finally:
            if os.path.exists(self._tmp_path):
                os.remove(self._tmp_path)


class _AtomicWritesPathManager:
    """A PathManager whose writes to local files go through :class:`AtomicFile`; every
    other call (reads, remote paths, ls, rm) is the wrapped PathManager's."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path and not kwargs:
            return AtomicFile(path, mode)
        return self._path_manager.open(path, mode, **kwargs)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` whose checkpoints and ``last_checkpoint`` tag are written
    to a temporary file and renamed into place: an interrupted save never leaves a
    truncated ``model_*.pth`` behind or a tag pointing at one. fvcore's checkpointer writes
    every file through its ``path_manager``, which is where the temporary file comes in.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWritesPathManager(self.path_manager)


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps what Detectron2's loader found incompatible; logs none of it (the caller
    raises one summary instead of fvcore's key-by-key warnings)."""

    def _load_model(self, checkpoint):
        def quiet(record):  # fvcore's warning per mis-shaped tensor
            return record.levelno < logging.WARNING

        self.logger.addFilter(quiet)
        try:
            self.incompatible = super()._load_model(checkpoint)
        finally:
            self.logger.removeFilter(quiet)
        return self.incompatible

    def _log_incompatible_keys(self, incompatible):
        pass


_SHOWN = 3  # tensor groups named per kind of mismatch


def _summary(keys) -> str:
    """'N tensors: a.{bias, weight}, b.weight, ... (M more)', keys grouped by module."""
    groups = defaultdict(list)
    for key in keys:
        head, _, tail = key.rpartition(".")
        groups[head].append(tail)
    names = [f"{head}.{tails[0]}" if len(tails) == 1 else f"{head}.{{{', '.join(sorted(tails))}}}"
             for head, tails in groups.items()]
    more = f", ... ({len(names) - _SHOWN} more modules)" if len(names) > _SHOWN else ""
    return f"{len(keys)} tensor{'s' * (len(keys) != 1)}: " + ", ".join(names[:_SHOWN]) + more


def _likely_cause(incompatible, missing, key: str) -> str:
    """The likely cause of the mismatch and its fix, as one sentence."""
    lazy = is_lazy_key(key)
    unexpected = incompatible.unexpected_keys
    shapes = {name: (ckpt, model) for name, ckpt, model in incompatible.incorrect_shapes}

    def option(yacs, lazy_key, value):
        return f"{lazy_key}={value}" if lazy else f"{yacs} {value}"

    scope_bias = [k for k in unexpected + missing if k.endswith(".scope.bias")]
    if scope_bias and not any(k.endswith(".scope.weight") for k in unexpected + missing):
        present = scope_bias[0] in unexpected
        return (f"the checkpoint's DySample+ scope convs {'have' if present else 'lack'} a "
                f"bias: set {option('MODEL.FPN.DYSAMPLE.SCOPE_BIAS', 'scope_bias', present)}")
    if any(".scope." in k for k in unexpected + missing):
        present = any(".scope." in k for k in unexpected)
        return (f"the checkpoint {'is' if present else 'is not'} DySample+ (dynamic scope): "
                f"set {option('MODEL.FPN.DYSAMPLE.DYSCOPE', 'dyscope', present)}")
    if any("upsample" in k for k in missing) and not unexpected:
        return ("the checkpoint has no DySample upsamplers (an FPN with nearest upsampling?): "
                "evaluate it with the config it was trained with, or train this one")
    if any("upsample" in k for k in unexpected) and not missing:
        return ("the checkpoint has DySample upsamplers the model lacks: evaluate it with a "
                "DySample config")
    cls_score = [v for k, v in shapes.items() if k.endswith("cls_score.weight")]
    if cls_score:
        classes = cls_score[0][0][0] - 1  # a background class besides the thing classes
        return (f"the checkpoint has {classes} classes: set "
                f"{option('MODEL.ROI_HEADS.NUM_CLASSES', 'model.roi_heads.num_classes', classes)}")
    if any("upsample" in k and "offset" in k for k in shapes):
        return ("the DySample offset convs differ in shape: the checkpoint's style or groups "
                "differ from the config's")
    return "evaluate the checkpoint with the config it was trained with"


def load_exact_checkpoint(model, path: str, key: str = "MODEL.WEIGHTS") -> None:
    """
    Load ``path`` (a file or URL Detectron2 understands) into ``model``, requiring every
    parameter and buffer to be present with the right shape and nothing left over.
    Detectron2's checkpointer only logs such problems; evaluating a half-random model
    silently is worse than stopping. ``key`` is the config key that named ``path`` (e.g.
    ``train.init_checkpoint`` in lazy configs), for the messages.

    Raises:
        UserInputError: the checkpoint file does not exist, cannot be read or downloaded.
        CheckpointMismatchError: a few lines: how many tensors are missing, unexpected
            and mis-shaped, the first few of each, and the likely cause with its fix.
    """
    local = check_weights(path, required=True, key=key)
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(local, checkpointables=[])
    incompatible = checkpointer.incompatible
    # fvcore drops mis-shaped tensors before loading: they are not missing as well
    shaped = {name for name, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in shaped]
    problems = []
    if missing:
        problems.append("missing in the checkpoint: " + _summary(missing))
    if incompatible.unexpected_keys:
        problems.append("not in the model: " + _summary(incompatible.unexpected_keys))
    if incompatible.incorrect_shapes:
        name, shape_ckpt, shape_model = incompatible.incorrect_shapes[0]
        problems.append(
            f"shapes differ: {_summary([k for k, _, _ in incompatible.incorrect_shapes])} "
            f"(e.g. {name}: {tuple(shape_ckpt)} in the checkpoint, {tuple(shape_model)} in "
            "the model)"
        )
    if problems:
        raise CheckpointMismatchError(
            f"{key}={path!r} does not match the model built from the config:\n  "
            + "\n  ".join(problems) + "\n  likely cause: " + _likely_cause(incompatible, missing, key)
        )
