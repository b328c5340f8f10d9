"""Building a YACS config from a file and ``KEY VALUE`` options, with early, precise errors."""
import difflib
import logging
import os
import re

import torch
from detectron2.config import CfgNode, get_cfg

from dysample_d2.config import add_dysample_config, check_dysample_config
from .checks import UserKeyError, UserValueError, check_config_file

logger = logging.getLogger(__name__)


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


def _yacs_keys(node: CfgNode, prefix=""):
    for name, value in node.items():
        if isinstance(value, CfgNode):
            yield from _yacs_keys(value, prefix + name + ".")
        else:
            yield prefix + name


def _unknown_key_error(err: Exception, cfg: CfgNode, source: str) -> UserKeyError:
    message = str(err.args[0]) if err.args else str(err)
    found = re.search(r"Non-existent (?:config )?key: ([\w.]+)", message)
    hint = closest_key(found.group(1), _yacs_keys(cfg)) if found else ""
    return UserKeyError(f"{source}: {message}{hint}")


def cpu_count() -> int:
    """The CPUs this process may run on (as torch's DataLoader counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cap_workers(num_workers: int, key: str) -> int:
    """``num_workers`` at most the CPU count, with an info line when it is lowered (more
    worker processes than CPUs only slow loading down, and torch's DataLoader warns)."""
    cpus = cpu_count() or 1
    if num_workers > cpus:
        logger.info(f"{key} lowered from {num_workers} to {cpus}, the number of CPUs")
        return cpus
    return num_workers


def setup_config(config_file: str, opts=(), *, freeze: bool = False) -> CfgNode:
    """
    The Detectron2 config (with the DySample keys) of ``config_file`` merged with ``opts``,
    a flat list of ``KEY VALUE`` pairs as train_net.py takes them on its command line.

    Errors are raised before anything is built: a missing file; an unknown key, naming the
    key, where it came from and the closest valid key; a value of the wrong type; DySample
    values that are not allowed (naming the key and the allowed values).
    Without CUDA, ``MODEL.DEVICE cuda`` becomes ``cpu``, and on CPU ``SOLVER.AMP.ENABLED``
    becomes false (Detectron2's AMP needs CUDA), each with a warning; DATALOADER.NUM_WORKERS
    above the CPU count is lowered to it, with an info line: the configs run as written on
    any machine. Every refusal is a :class:`~.checks.UserInputError`.

    Args:
        freeze: return the config frozen, as train_net.py runs it; callers that set further
            keys in code leave it False.
    """
    check_config_file(config_file)
    cfg = get_cfg()
    add_dysample_config(cfg)
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise UserValueError(f"config options must be KEY VALUE pairs, got an odd number: {opts}")
    for source, merge, arg in ((f"--config-file {config_file}", cfg.merge_from_file, config_file),
                               ("command-line config options", cfg.merge_from_list, opts)):
        try:
            merge(arg)
        except KeyError as e:
            raise _unknown_key_error(e, cfg, source) from e
        except AssertionError as e:  # YACS asserts on unknown command-line keys
            if "Non-existent" not in str(e):
                raise UserValueError(f"{source}: {e}") from e
            raise _unknown_key_error(e, cfg, source) from e
        except ValueError as e:  # a value of the wrong type
            raise UserValueError(f"{source}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: MODEL.DEVICE set to cpu")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED:
        logger.warning("SOLVER.AMP.ENABLED set to False (Detectron2's AMP needs CUDA)")
        cfg.SOLVER.AMP.ENABLED = False
    cfg.DATALOADER.NUM_WORKERS = cap_workers(cfg.DATALOADER.NUM_WORKERS, "DATALOADER.NUM_WORKERS")
    try:
        check_dysample_config(cfg)
    except ValueError as e:  # a DySample value that is not allowed
        raise UserValueError(str(e)) from e
    if freeze:
        cfg.freeze()
    return cfg
