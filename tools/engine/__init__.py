from .checkpoint import (
    AtomicDetectionCheckpointer,
    AtomicFile,
    CheckpointMismatchError,
    load_exact_checkpoint,
)
from .checks import (
    UserFileNotFoundError,
    UserInputError,
    UserKeyError,
    UserValueError,
    check_config_file,
    check_datasets,
    check_num_classes,
    check_weights,
)
from .config import setup_config
from .evaluation import build_evaluator, evaluate_lazy
from .lazy_config import setup_lazy_config
from .lazy_run import LazyRun
from .setup import setup_run
from .training import build_step_trainer
from .yacs_run import Trainer, YacsRun

__all__ = [
    "AtomicDetectionCheckpointer",
    "AtomicFile",
    "CheckpointMismatchError",
    "load_exact_checkpoint",
    "UserInputError",
    "UserValueError",
    "UserKeyError",
    "UserFileNotFoundError",
    "check_config_file",
    "check_datasets",
    "check_num_classes",
    "check_weights",
    "setup_config",
    "build_evaluator",
    "evaluate_lazy",
    "setup_lazy_config",
    "LazyRun",
    "setup_run",
    "build_step_trainer",
    "Trainer",
    "YacsRun",
]
