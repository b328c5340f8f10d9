from .checkpoint import (
    AtomicDetectionCheckpointer,
    AtomicFile,
    CheckpointMismatchError,
    load_exact_checkpoint,
)
from .checks import (
    UserFileNotFoundError,
    UserInputError,
    check_datasets,
    check_num_classes,
    check_weights,
)
from .config import setup_config
from .evaluation import build_evaluator
from .run import Run
from .setup import setup_run

__all__ = [
    "AtomicDetectionCheckpointer",
    "AtomicFile",
    "CheckpointMismatchError",
    "load_exact_checkpoint",
    "UserInputError",
    "UserFileNotFoundError",
    "check_datasets",
    "check_num_classes",
    "check_weights",
    "setup_config",
    "build_evaluator",
    "Run",
    "setup_run",
]
