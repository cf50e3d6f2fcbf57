"""Type check of Hydra ``key=value`` overrides against the composed defaults.

detlightning's configs are plain yaml, so OmegaConf accepts ``solver.max_iter=abc`` and the run fails much later
without the key. :func:`check_override_types` compares each overridden value with the value the same config has
without the value overrides (same config groups): the *default*. Rules, by the default's type:

* ``None`` (or unresolvable / ``???``): anything;
* ``bool``: a bool; ``int``: an int (not a bool, not ``2.5``); ``float``: an int or float (ints become floats);
* ``str``: any scalar (``trainer``-like keys that take ``"auto"`` or a number); not a list or mapping;
* list: a list; inside it, where every default element is a number (or every one a bool), a given scalar element must
  be one too (nested lists are compared the same way; a scalar where the default has a list is accepted, since
  detectron2 broadcasts e.g. flat anchor ``sizes``);
* mapping (``_target_`` nodes included): a mapping.

``null`` is accepted for every key. Keys that the defaults lack (``+new.key=...``), deletions (``~key``), ``hydra.*``
keys and Lightning's own ``trainer.*`` keyword arguments (polymorphic; Lightning checks them) are not checked.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigTypeError", "check_override_types"]

UNCHECKED_PREFIXES = ("hydra.", "trainer.")
_ABSENT = object()


class ConfigTypeError(ValueError):
    """An override's value does not have its key's type."""


def _kind(value: Any) -> str:
    """The schema kind of a plain value: none, bool, int, float, str, list, mapping (else its type name)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return _kind(value) in ("int", "float")


def _compatible(default: Any, given: Any) -> bool:
    expected, got = _kind(default), _kind(given)
    if expected == "none" or got == "none":
        return True
    if expected == "float":
        return got in ("int", "float")
    if expected == "str":
        return got in ("str", "int", "float", "bool")
    if expected == "list":
        return got == "list" and _elements_compatible(default, given)
    return got == expected


def _elements_compatible(default: Sequence[Any], given: Sequence[Any]) -> bool:
    """Element check of a list whose default elements share one kind (numbers, bools or lists); mixed or empty
    defaults accept any elements."""
    if not default:
        return True
    if all(_is_number(d) for d in default):
        return all(_is_number(g) or _kind(g) in ("list", "none") for g in given)
    if all(_kind(d) == "bool" for d in default):
        return all(_kind(g) in ("bool", "list", "none") for g in given)
    if all(_kind(d) == "list" for d in default):
        # compare with the first default sub-list; a scalar where a list is expected is broadcast by the code
        return all(_kind(g) != "list" or _elements_compatible(default[0], g) for g in given)
    return True


def _expected_text(default: Any) -> str:
    kind = _kind(default)
    text = {
        "float": "a float (or int)",
        "int": "an int",
        "bool": "a bool (true/false)",
        "str": "a string (or number)",
        "mapping": "a mapping ({key: value})",
    }.get(kind, kind)
    if kind == "list":
        elems = {_kind(d) for d in default}
        inner = "numbers" if elems <= {"int", "float"} and elems else " / ".join(sorted(elems)) or "any"
        text = f"a list of {inner} ([...])"
    return text


def _plain(cfg: DictConfig, key: str) -> Any:
    """The resolved plain value at ``key``; ``_ABSENT`` when the key is missing, ``None`` when it does not resolve."""
    try:
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation to a key that is not there
        return None
    if node is _ABSENT:
        return _ABSENT
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException:
            return None
    return node


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and OmegaConf.is_interpolation(node, leaf)


def _split_overrides(overrides: Sequence[str], groups: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(group selections, [(key, override text)] of the value overrides that have a default to compare with)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    group_overrides: list[str] = []
    values: list[tuple[str, str]] = []
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        is_group = "." not in key and (key in groups or "/" in key or ov.package is not None)
        if is_group:
            group_overrides.append(ov.input_line)
        elif key.startswith("hydra."):
            continue
        elif not (ov.is_delete() or ov.is_add() or ov.is_sweep_override()):
            values.append((key, ov.input_line))
    return group_overrides, values


@functools.lru_cache(maxsize=16)
def _defaults(config_name: str, group_overrides: tuple[str, ...]) -> DictConfig:
    from .config import compose_without_checks

    return compose_without_checks(list(group_overrides), config_name=config_name)


def check_override_types(cfg: DictConfig, overrides: Sequence[str], config_name: str = "config") -> None:
    """Raise :class:`ConfigTypeError` listing every override of ``overrides`` whose value in ``cfg`` does not have
    the type of its default (see the module docstring); ints given for float keys become floats in ``cfg``."""
    from .config import config_groups

    group_overrides, values = _split_overrides(overrides, config_groups())
    values = [(k, line) for k, line in values if not k.startswith(UNCHECKED_PREFIXES)]
    if not values:
        return
    defaults = _defaults(config_name, tuple(group_overrides))
    problems = []
    for key, line in values:
        default = _plain(defaults, key)
        if default is _ABSENT:
            continue  # a key of no default (Hydra itself refuses unknown keys without '+')
        given = _plain(cfg, key)
        if given is _ABSENT or _compatible(default, given):
            if _kind(default) == "float" and _kind(given) == "int" and not _is_interpolation(cfg, key):
                OmegaConf.update(cfg, key, float(given), merge=False)
            continue
        problems.append(
            f"  {key}: expected {_expected_text(default)}, got {_kind(given)} {given!r} (default {default!r}; "
            f"override {line!r})"
        )
    if problems:
        raise ConfigTypeError("Config override(s) of the wrong type:\n" + "\n".join(problems))
