import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not cover the model exactly."""


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` whose checkpoints and ``last_checkpoint`` tag are written
    to a temporary file and renamed into place: an interrupted save never leaves a
    truncated ``model_*.pth`` behind or a tag pointing at one.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not os.path.isdir(self.save_dir):  # a remote PathManager location
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        self.logger.info(f"Saving checkpoint to {os.path.join(self.save_dir, basename)}")
        _atomic_write(os.path.join(self.save_dir, basename), lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def _atomic_write(path, write_fn):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps what Detectron2's loader found incompatible (it only logs it)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_exact_checkpoint(model, path: str) -> None:
    """
    Load ``path`` (a file or URL Detectron2 understands) into ``model``, requiring every
    parameter and buffer to be present with the right shape and nothing left over.
    Detectron2's checkpointer only logs such problems; evaluating a half-random model
    silently is worse than stopping.

    Raises:
        FileNotFoundError: the checkpoint file does not exist.
        CheckpointMismatchError: listing missing, unexpected and mis-shaped keys.
    """
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint file {path!r} does not exist")
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.missing_keys:
        problems.append("missing in the checkpoint: " + ", ".join(incompatible.missing_keys))
    if incompatible.unexpected_keys:
        problems.append("not in the model: " + ", ".join(incompatible.unexpected_keys))
    for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
        problems.append(f"{key}: shape {tuple(shape_ckpt)} in the checkpoint, "
                        f"{tuple(shape_model)} in the model")
    scope_bias = [k for k in incompatible.unexpected_keys + incompatible.missing_keys
                  if k.endswith(".scope.bias")]
    if scope_bias:
        present = scope_bias[0] in incompatible.unexpected_keys
        problems.append(
            f"the checkpoint's DySample+ scope convs {'have' if present else 'lack'} a bias: "
            f"set MODEL.FPN.DYSAMPLE.SCOPE_BIAS {present}"
        )
    if problems:
        raise CheckpointMismatchError(
            f"MODEL.WEIGHTS={path!r} does not match the model built from the config "
            "(wrong config for this checkpoint?):\n  " + "\n  ".join(problems)
        )
