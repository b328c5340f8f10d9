"""Loading a YACS (.yaml) config file with ``KEY VALUE`` options, refusing bad ones early."""
import re

from detectron2.config import CfgNode, get_cfg

from dysample_d2.config import add_dysample_config, check_dysample_config

from .checks import UserKeyError, UserValueError, closest_key


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


def load_yacs_config(config_file: str, opts=()) -> CfgNode:
    """
    The Detectron2 config (with the DySample keys) of ``config_file`` merged with ``opts``,
    a flat list of ``KEY VALUE`` pairs as train_net.py takes them on its command line.

    Refused (a :class:`~.checks.UserInputError`): an unknown key, naming the
    key, where it came from and the closest valid key; a value of the wrong type; DySample
    values that are not allowed (naming the key and the allowed values).
    """
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
    try:
        check_dysample_config(cfg)
    except ValueError as e:  # a DySample value that is not allowed
        raise UserValueError(str(e)) from e
    return cfg
