from detectron2.config import CfgNode as CN

DYSAMPLE_STYLES = ("lp", "pl")


def add_dysample_config(cfg):
    """
    Add the DySample-FPN keys to a Detectron2 config (in place).

    MODEL.FPN.DYSAMPLE.STYLE:   "lp" (offsets predicted at low resolution) or "pl".
    MODEL.FPN.DYSAMPLE.GROUPS:  channel groups, each with its own sampling positions;
                                must divide MODEL.FPN.OUT_CHANNELS.
    MODEL.FPN.DYSAMPLE.DYSCOPE: False: static scope (DySample); True: dynamic scope
                                (DySample+).
    MODEL.FPN.DYSAMPLE.SCOPE_BIAS: True gives DySample+'s scope conv a bias, as in the
                                authors' first dysample.py release (for checkpoints trained
                                with it); needs DYSCOPE True.
    """
    cfg.MODEL.FPN.DYSAMPLE = CN()
    cfg.MODEL.FPN.DYSAMPLE.STYLE = "lp"
    cfg.MODEL.FPN.DYSAMPLE.GROUPS = 4
    cfg.MODEL.FPN.DYSAMPLE.DYSCOPE = False
    cfg.MODEL.FPN.DYSAMPLE.SCOPE_BIAS = False


def dysample_kwargs_from_config(cfg) -> dict:
    """
    Read and validate MODEL.FPN.DYSAMPLE.*, raising with the key name and allowed values.

    Returns:
        dict with keys style, groups, dyscope, scope_bias (DySample's constructor arguments).
    """
    if "DYSAMPLE" not in cfg.MODEL.FPN:
        raise KeyError(
            "MODEL.FPN.DYSAMPLE is missing from the config: call "
            "dysample_d2.add_dysample_config(cfg) before merging the config file."
        )
    node = cfg.MODEL.FPN.DYSAMPLE
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if node.STYLE not in DYSAMPLE_STYLES:
        raise ValueError(
            f"MODEL.FPN.DYSAMPLE.STYLE must be one of {list(DYSAMPLE_STYLES)}, got {node.STYLE!r}"
        )
    groups = node.GROUPS
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"MODEL.FPN.DYSAMPLE.GROUPS must be an int >= 1, got {groups!r}")
    if out_channels % groups != 0:
        divisors = [d for d in range(1, out_channels + 1) if out_channels % d == 0]
        raise ValueError(
            f"MODEL.FPN.DYSAMPLE.GROUPS={groups} must divide MODEL.FPN.OUT_CHANNELS="
            f"{out_channels}; allowed values: {divisors}"
        )
    if node.STYLE == "pl" and out_channels % 4 != 0:
        raise ValueError(
            f"MODEL.FPN.DYSAMPLE.STYLE='pl' needs MODEL.FPN.OUT_CHANNELS divisible by 4 "
            f"(scale 2 squared), got {out_channels}"
        )
    if not isinstance(node.DYSCOPE, bool):
        raise ValueError(f"MODEL.FPN.DYSAMPLE.DYSCOPE must be true or false, got {node.DYSCOPE!r}")
    if not isinstance(node.SCOPE_BIAS, bool):
        raise ValueError(
            f"MODEL.FPN.DYSAMPLE.SCOPE_BIAS must be true or false, got {node.SCOPE_BIAS!r}"
        )
    if node.SCOPE_BIAS and not node.DYSCOPE:
        raise ValueError(
            "MODEL.FPN.DYSAMPLE.SCOPE_BIAS True needs MODEL.FPN.DYSAMPLE.DYSCOPE True "
            "(only DySample+ has a scope conv)"
        )
    return {"style": node.STYLE, "groups": groups, "dyscope": node.DYSCOPE,
            "scope_bias": node.SCOPE_BIAS}
