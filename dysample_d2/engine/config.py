import logging

import torch
from detectron2.config import get_cfg

from ..config import add_dysample_config
from .checks import check_config_file


def setup_config(config_file: str, opts=()):
    """
    A Detectron2 config with the DySample keys, merged from ``config_file`` and ``opts``
    (KEY VALUE pairs); unknown keys raise KeyError naming the key and where it came from.
    MODEL.DEVICE "cuda" falls back to "cpu" (with a warning) on machines without CUDA.
    """
    check_config_file(config_file)
    cfg = get_cfg()
    add_dysample_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError) as e:
        raise KeyError(f"--config-file {config_file}: {e}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # YACS asserts on unknown command-line keys
        raise KeyError(f"command-line config options: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("CUDA is not available: MODEL.DEVICE set to cpu")
        cfg.MODEL.DEVICE = "cpu"
    return cfg
