import os
import tempfile

from detectron2.checkpoint import DetectionCheckpointer

from .checks import check_weights


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not cover the model exactly."""


class _AtomicFile:
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
    """A PathManager whose writes to local files go through :class:`_AtomicFile`; every
    other call (reads, remote paths, ls, rm) is the wrapped PathManager's."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path and not kwargs:
            return _AtomicFile(path, mode)
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
    """Keeps what Detectron2's loader found incompatible (it only logs it)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_exact_checkpoint(model, path: str, key: str = "MODEL.WEIGHTS") -> None:
    """
    Load ``path`` (a file or URL Detectron2 understands) into ``model``, requiring every
    parameter and buffer to be present with the right shape and nothing left over.
    Detectron2's checkpointer only logs such problems; evaluating a half-random model
    silently is worse than stopping. ``key`` is the config key that named ``path`` (e.g.
    ``train.init_checkpoint`` in lazy configs), for the messages.

    Raises:
        FileNotFoundError: the checkpoint file does not exist.
        CheckpointMismatchError: listing missing, unexpected and mis-shaped keys.
    """
    check_weights(path, required=True, key=key)
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.missing_keys:
        problems.append("missing in the checkpoint: " + ", ".join(incompatible.missing_keys))
    if incompatible.unexpected_keys:
        problems.append("not in the model: " + ", ".join(incompatible.unexpected_keys))
    for name, shape_ckpt, shape_model in incompatible.incorrect_shapes:
        problems.append(f"{name}: shape {tuple(shape_ckpt)} in the checkpoint, "
                        f"{tuple(shape_model)} in the model")
    scope_bias = [k for k in incompatible.unexpected_keys + incompatible.missing_keys
                  if k.endswith(".scope.bias")]
    if scope_bias:
        present = scope_bias[0] in incompatible.unexpected_keys
        problems.append(
            f"the checkpoint's DySample+ scope convs {'have' if present else 'lack'} a bias: "
            f"set MODEL.FPN.DYSAMPLE.SCOPE_BIAS {present} (scope_bias={present} in lazy configs)"
        )
    if problems:
        raise CheckpointMismatchError(
            f"{key}={path!r} does not match the model built from the config "
            "(wrong config for this checkpoint?):\n  " + "\n  ".join(problems)
        )
