"""Loading a LazyConfig (.py) file with ``key=value`` overrides, refusing bad overrides early."""
import difflib
import inspect

import torch
from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from dysample_d2.config import check_dysample_config

from .checks import UserKeyError, UserValueError, closest_key

_MISSING = object()

# Keys that Detectron2's lazy training reads (as default_setup does) with a default, though
# its configs/common/train.py does not define them.
OPTIONAL_KEYS = ("train.seed", "train.cudnn_benchmark")


def _flat_keys(tree, prefix=""):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for name, value in items:
        key = f"{prefix}{name}"
        yield key
        if isinstance(value, (dict, list)):
            yield from _flat_keys(value, key + ".")


def _lookup(tree, parts):
    """The node at ``parts`` of a plain dict/list tree, or _MISSING."""
    for part in parts:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return _MISSING
    return tree


def _parameters(target):
    """(the keyword arguments ``target`` names, whether it takes any other keyword too).

    A class whose ``__init__`` takes ``**kwargs`` passes them on to its base class (as
    Detectron2's StandardROIHeads does to ROIHeads): the bases' arguments are added, up to
    one without ``**kwargs`` (nn.Module and object take none). Detectron2's ``configurable``
    keeps the wrapped function's signature (functools.wraps), which is what is read.
    """
    if isinstance(target, str):
        target = locate(target)
    chain = [c.__init__ for c in inspect.getmro(target) if c not in (torch.nn.Module, object)
             and "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names = set()
    for function in chain:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # no signature to read: let instantiate decide
            return names, True
        names.update(p.name for p in parameters
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names, False
    return names, not inspect.isclass(target)


def _keywords_name(target):
    """The name of the ``**keywords`` parameter of a LazyCall target, or None."""
    target = locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    return next((p.name for p in parameters if p.kind is p.VAR_KEYWORD), None)


def _accepts_argument(target, name: str) -> bool:
    """Whether a LazyCall target takes a keyword argument ``name``: one it names, or, when
    it takes ``**kwargs`` it passes elsewhere, any name that is not a near miss of one it
    names (``total_batch_sise`` is a typo of ``total_batch_size``, not an extra option)."""
    names, takes_others = _parameters(target)
    if name in names:
        return True
    return takes_others and not difflib.get_close_matches(name, names, n=1, cutoff=0.8)


def _type_error(old, new):
    """Why ``new`` cannot replace the number or bool ``old``, or None if it can."""
    if isinstance(old, bool):
        return None if isinstance(new, bool) else "true or false"
    if isinstance(old, int):
        return None if isinstance(new, int) and not isinstance(new, bool) else "an int"
    if isinstance(old, float):
        return None if isinstance(new, (int, float)) and not isinstance(new, bool) else "a number"
    return None


def _check_keywords_key(tree, text: str, parts) -> None:
    """Refuse an override that sets a target's ``**keywords`` parameter as a key
    (``model.backbone.upsampler_options.up_kernel=3``), naming the node's own key to set."""
    for depth in (1, 2):
        node = _lookup(tree, parts[:-depth])
        if len(parts) > depth and isinstance(node, dict) and "_target_" in node and (
                parts[-depth] == _keywords_name(node["_target_"])):
            prefix = ".".join(parts[:-depth])
            option = parts[-1] if depth == 2 else "<option>"
            raise UserKeyError(f"override {text!r}: the {parts[-depth]} of {prefix} are keys of "
                               f"{prefix} itself: set {prefix}.{option}=...")


def _check_override(tree, text: str, key: str, value) -> None:
    parts = key.split(".")
    old = _lookup(tree, parts)
    if old is _MISSING and key not in OPTIONAL_KEYS:
        parent = _lookup(tree, parts[:-1])
        target = parent.get("_target_") if isinstance(parent, dict) else None
        _check_keywords_key(tree, text, parts)
        candidates = list(_flat_keys(tree))
        if target is not None:
            if _accepts_argument(target, parts[-1]):
                return  # a constructor argument the config leaves at its default
            prefix = ".".join(parts[:-1])
            candidates += [f"{prefix}.{name}" for name in sorted(_parameters(target)[0])]
        hint = closest_key(key, candidates)
        raise UserKeyError(f"override {text!r}: the config has no key {key}{hint}")
    if old is _MISSING or isinstance(old, str) and (old.startswith("${") or old == "???"):
        return  # an interpolation or a value the config leaves to be set
    expected = _type_error(old, value)
    if expected:
        raise UserValueError(
            f"override {text!r}: {key} must be {expected} (the config has {old!r}), got {value!r}"
        )


def _parse_override(parser, text: str):
    if "=" not in text:
        raise UserValueError(f"override {text!r}: lazy configs take key=value overrides")
    try:
        (override,) = parser.parse_overrides([text])
    except Exception as e:  # hydra's OverrideParseException
        raise UserValueError(f"override {text!r}: {e}") from e
    if override.is_delete():
        raise UserValueError(f"override {text!r}: deleting keys is not supported")
    return override.key_or_group, override.value()


def load_lazy_config(path: str, overrides=()):
    """
    The LazyConfig of ``path`` (a .py file as in Detectron2's ``configs/new_baselines``) with
    ``overrides`` applied, each a ``key=value`` string in Hydra's override syntax (as
    Detectron2's ``LazyConfig.apply_overrides`` takes them).

    Detectron2 would add an unknown key silently; here each override is checked before it
    is applied, and refused with a message that names it: a key the config does not have
    (with the closest valid key), unless it is an argument that the LazyCall target above it
    accepts or one of :data:`OPTIONAL_KEYS`; a number or bool replaced by a value of another
    kind (``train.max_iter=abc``); DySample arguments that are not allowed
    (``model.backbone.style=xx``), naming the node. Every refusal is a
    :class:`~.checks.UserInputError`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = LazyConfig.load(path)
    parser = OverridesParser.create()
    for text in overrides:
        key, value = _parse_override(parser, str(text))
        _check_override(OmegaConf.to_container(cfg, resolve=False), text, key, value)
        LazyConfig.apply_overrides(cfg, [str(text)])
    try:
        check_dysample_config(cfg)
    except ValueError as e:  # a DySample argument that is not allowed
        raise UserValueError(str(e)) from e
    return cfg
