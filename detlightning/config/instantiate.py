"""``LazyCall`` and ``instantiate``: detectron2's lazy object graph on OmegaConf.

``LazyCall(f)(a=1, b=L(g)(c=2))`` records a call without making it: the result is a ``DictConfig``
``{"_target_": f, "a": 1, "b": {"_target_": g, "c": 2}}`` that can be edited, overridden from the command line
(``model.roi_heads.num_classes=3``), saved as yaml and instantiated later, innermost calls first.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..utils.registry import locate

__all__ = ["LazyCall", "instantiate", "target_to_string"]

logger = logging.getLogger(__name__)

TARGET_KEY = "_target_"


def target_to_string(target: Any) -> str:
    """The dotted import path of a class or function (``"detlightning.modeling.GeneralizedRCNN"``).

    The shortest public module path that still resolves to the very object is used, so a saved config names
    ``detlightning.modeling.FPN`` rather than the private defining module when both work.
    """
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        raise TypeError(f"{target!r} has no importable name: a LazyCall target must be a module-level callable")
    parts = module.split(".")
    for i in range(1, len(parts)):
        candidate = ".".join(parts[:i]) + "." + qualname
        if any(p.startswith("_") for p in parts[1:i]):
            continue
        try:
            if locate(candidate) is target:
                return candidate
        except ImportError:
            continue
    return f"{module}.{qualname}"


class LazyCall:
    """Wrap a callable (or its dotted path) so that calling the wrapper records the call as a config node.

    Example::

        from detlightning.config import LazyCall as L
        from detlightning.layers import ShapeSpec
        layer = L(ShapeSpec)(channels=256)    # a DictConfig; nothing is built yet
        layer.channels = 128                  # edit it like any config
        instantiate(layer)                    # ShapeSpec(channels=128)
    """

    def __init__(self, target: Callable[..., Any] | str) -> None:
        if not (callable(target) or isinstance(target, (str, Mapping))):
            raise TypeError(f"LazyCall target must be a callable or a dotted import path, got {target!r}")
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        target = self._target
        if dataclasses.is_dataclass(target):
            # a dataclass target is kept as its name: OmegaConf would otherwise treat it as a structured schema
            target = target_to_string(target)
        return DictConfig(content={TARGET_KEY: target, **kwargs}, flags={"allow_objects": True})


def _is_call(node: Any) -> bool:
    return isinstance(node, (Mapping, DictConfig)) and TARGET_KEY in node


def instantiate(cfg: Any) -> Any:
    """Build the objects a lazy config describes, recursively.

    * a node with ``_target_``: its arguments are instantiated first, then ``target(**arguments)`` is returned;
      a string target is imported with :func:`~detlightning.utils.registry.locate`;
    * a list (``ListConfig`` or ``list``): a list of its instantiated items;
    * anything else (numbers, strings, a mapping without ``_target_``, objects) is returned unchanged.

    Interpolations (``"${..bottom_up.out_features}"``) are resolved as the values are read. A failing call is
    re-raised with the config path of the node and its target, so a typo in a nested argument is easy to find.
    """
    return _instantiate(cfg, path="")


def _instantiate(cfg: Any, path: str) -> Any:
    if isinstance(cfg, (ListConfig, list)):
        return [_instantiate(item, f"{path}[{i}]") for i, item in enumerate(cfg)]
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(cfg._metadata.object_type):
        return OmegaConf.to_object(cfg)  # a structured config stands for its dataclass
    if not _is_call(cfg):
        return cfg
    prefix = f"{path}." if path else ""
    kwargs = {str(k): _instantiate(v, f"{prefix}{k}") for k, v in cfg.items() if k != TARGET_KEY}
    target = cfg[TARGET_KEY]
    if _is_call(target):
        target = _instantiate(target, f"{prefix}{TARGET_KEY}")
    if isinstance(target, str):
        target = locate(target)
    if not callable(target):
        raise TypeError(f"{prefix}{TARGET_KEY} of config node {path or '<root>'!r} is not callable: {target!r}")
    try:
        return target(**kwargs)
    except Exception as e:
        name = getattr(target, "__qualname__", repr(target))
        message = f"while instantiating {name} at config node {path or '<root>'!r}"
        if hasattr(e, "add_note"):  # Python >= 3.11: the traceback shows the node
            e.add_note(message)
        else:
            logger.error("Error %s", message)
        raise
