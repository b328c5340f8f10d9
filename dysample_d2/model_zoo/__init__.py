"""
The configs of dysample-d2, installed with the package and found the way
``detectron2.model_zoo`` finds Detectron2's::

    from dysample_d2 import model_zoo

    cfg = model_zoo.get_config("COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml")
    path = model_zoo.get_config_file("new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py")

YACS ``_BASE_`` chains and lazy configs' relative imports resolve inside the installed
``configs/`` folder. A source checkout's top-level ``configs`` links to the same folder.
The nearest-FPN baselines are Detectron2's own configs, which this package does not copy: a
path it does not hold is looked up in ``detectron2.model_zoo``
(``get_config("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")`` is Detectron2's file with the
DySample keys added).
"""
import difflib
import os
import warnings

__all__ = ["CONFIG_DIR", "get_config_file", "get_config"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def _config_names():
    for root, _dirs, files in os.walk(CONFIG_DIR):
        for name in files:
            if name.endswith((".yaml", ".py")) and not name.startswith("Base-"):
                yield os.path.relpath(os.path.join(root, name), CONFIG_DIR)


def get_config_file(config_path: str) -> str:
    """
    The absolute path of a packaged config, else of Detectron2's model-zoo config of that path.

    Args:
        config_path (str): relative to the configs folder, as in this project's README, e.g.
            "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml"; a leading "configs/" is
            accepted.

    Raises:
        FileNotFoundError: naming the closest packaged configs.
    """
    with warnings.catch_warnings():  # Detectron2's model_zoo imports pkg_resources
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from detectron2 import model_zoo

    relative = config_path[len("configs/"):] if config_path.startswith("configs/") else config_path
    path = os.path.join(CONFIG_DIR, relative)
    if not os.path.isfile(path):
        try:
            return model_zoo.get_config_file(relative)
        except RuntimeError:  # not one of Detectron2's either
            pass
        close = difflib.get_close_matches(relative, sorted(_config_names()), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise FileNotFoundError(f"{config_path!r} is not one of dysample-d2's configs "
                                f"(under {CONFIG_DIR}){hint}")
    return path


def get_config(config_path: str, opts=()):
    """
    A packaged config, loaded as ``detectron2.model_zoo.get_config`` loads Detectron2's, with
    this package's DySample keys and checks.

    Args:
        config_path (str): as for :func:`get_config_file`.
        opts: ``KEY VALUE`` pairs for a YACS (.yaml) config, ``key=value`` strings for a
            lazy (.py) one.

    Returns:
        CfgNode (with the DySample keys) for .yaml files, omegaconf.DictConfig for .py files.

    Raises:
        ValueError: a DySample or upsampler value that is not allowed, naming its key.
    """
    from detectron2.config import LazyConfig, get_cfg

    from ..config import add_dysample_config, check_dysample_config

    path = get_config_file(config_path)
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        LazyConfig.apply_overrides(cfg, [str(o) for o in opts])
        check_dysample_config(cfg)
        return cfg
    cfg = get_cfg()
    add_dysample_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list([str(o) for o in opts])
    check_dysample_config(cfg)
    return cfg
