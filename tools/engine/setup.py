"""The start of a run: loggers, environment and config in the log, config.yaml, as
Detectron2's ``default_setup`` does, with a log file that reads as plain text."""
import logging
import os

import detectron2.utils.comm as comm
from detectron2.config import CfgNode, LazyConfig
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger


def _save_config(cfg, path: str) -> str:
    """Write the full config to ``path``; return its text for the log ('' if Detectron2
    could only pickle it)."""
    if isinstance(cfg, CfgNode):
        with PathManager.open(path, "w") as f:
            f.write(cfg.dump())
    else:
        LazyConfig.save(cfg, path)  # falls back to path + ".pkl" for unserialisable values
    if not PathManager.exists(path):
        return ""
    with PathManager.open(path) as f:
        return f.read()


def setup_run(cfg, args, output_dir: str) -> logging.Logger:
    """
    Set up Detectron2's loggers (console, and ``output_dir/log.txt``) and log the rank, the
    environment, the command line and the full config, each once; save the config to
    ``output_dir/config.yaml``. Used instead of ``default_setup``, which also logs the
    config file's own text and writes both with terminal colour codes into log.txt.
    Seeding and cudnn settings are left to the caller (the model is built, seeded, before
    this writes anything).
    """
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info(f"Command line arguments: {args}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        text = _save_config(cfg, path)
        logger.info(f"Full config, saved to {path}:\n{text}")
    return logger
