"""Loading a config as train_net.py runs it, YACS (.yaml) or lazy (.py): refused early where it
is wrong, and fitted to the machine (CPU, AMP, data loader workers)."""
import logging
import os

import torch
from detectron2.config import CfgNode

from .checks import check_config_file
from .layout import expand_key, get_key, layout_of, set_key
from .lazy_config import load_lazy_config
from .yacs_config import load_yacs_config

logger = logging.getLogger(__name__)


def cpu_count() -> int:
    """The CPUs this process may run on (as torch's DataLoader counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fit_to_machine(cfg) -> None:
    """
    Without CUDA, a cuda device becomes ``cpu``, and on CPU AMP is turned off (Detectron2's
    AMP needs CUDA), each with a warning; data loader workers above the CPU count are
    lowered to it (more only slow loading down, and torch's DataLoader warns), with an info
    line: the configs run as written on any machine.
    """
    layout = layout_of(cfg)
    device = get_key(cfg, layout.device, None)
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"CUDA is not available: {layout.device} set to cpu")
        set_key(cfg, layout.device, "cpu")
    if get_key(cfg, layout.device, None) == "cpu" and get_key(cfg, layout.amp, False):
        logger.warning(f"{layout.amp} set to False (Detectron2's AMP needs CUDA)")
        set_key(cfg, layout.amp, False)
    cpus = cpu_count() or 1
    for key in expand_key(cfg, layout.num_workers):
        workers = get_key(cfg, key)
        if isinstance(workers, int) and workers > cpus:
            logger.info(f"{key} lowered from {workers} to {cpus}, the number of CPUs")
            set_key(cfg, key, cpus)


def setup_config(config_file: str, opts=(), *, freeze: bool = False):
    """
    The config of ``config_file`` as train_net.py runs it: a YACS CfgNode (with the DySample
    keys) merged with ``opts``, ``KEY VALUE`` pairs, for a .yaml file; a lazy config with
    ``opts``, ``key=value`` overrides, applied for a .py file (see
    :func:`~.yacs_config.load_yacs_config`, :func:`~.lazy_config.load_lazy_config` for what
    is refused), then fitted to the machine (:func:`fit_to_machine`). Every refusal is a
    :class:`~.checks.UserInputError`.

    Args:
        freeze: return a YACS config frozen, as train_net.py runs it; callers that set
            further keys in code leave it False.
    """
    check_config_file(config_file)
    if config_file.endswith(".py"):
        cfg = load_lazy_config(config_file, opts)
    else:
        cfg = load_yacs_config(config_file, opts)
    fit_to_machine(cfg)
    if freeze and isinstance(cfg, CfgNode):
        cfg.freeze()
    return cfg
