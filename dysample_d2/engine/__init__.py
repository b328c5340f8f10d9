from .checkpoint import (
    AtomicDetectionCheckpointer,
    CheckpointMismatchError,
    load_exact_checkpoint,
)
from .config import setup_config
from .checks import check_config_file, check_datasets, check_weights

__all__ = [
    "AtomicDetectionCheckpointer",
    "CheckpointMismatchError",
    "load_exact_checkpoint",
    "setup_config",
    "check_config_file",
    "check_datasets",
    "check_weights",
]
