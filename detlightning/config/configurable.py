"""``@configurable``: explicit constructor arguments, plus a ``from_config`` that maps a config to them.

A class decorated this way can be built both ways, as in detectron2::

    head = StandardRPNHead(in_channels=256, num_anchors=3)        # explicit, no config needed
    head = StandardRPNHead(cfg, input_shape)                        # from_config(cfg, input_shape) -> kwargs
    head = StandardRPNHead(cfg, input_shape, box_dim=5)             # config, with one argument overridden
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from .reader import CfgView, is_cfg_node

__all__ = ["configurable", "is_config"]


def is_config(obj: Any) -> bool:
    """True for a detlightning config (OmegaConf ``DictConfig``), a detectron2-style ``CfgNode`` or a view of one.

    ``from_config`` receives the config exactly as the caller passed it; built-in components read it through
    :func:`detlightning.config.cfg_view`."""
    return isinstance(obj, (DictConfig, CfgView)) or is_cfg_node(obj)


def _called_with_cfg(*args: Any, **kwargs: Any) -> bool:
    if args and is_config(args[0]):
        return True
    return is_config(kwargs.get("cfg"))


def _get_args_from_config(from_config_func: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    signature = inspect.signature(from_config_func)
    params = list(signature.parameters)
    if not params or params[0] != "cfg":
        raise TypeError(f"{from_config_func.__qualname__} must take 'cfg' as its first argument")
    supports_var_arg = any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    )
    if supports_var_arg:
        return from_config_func(*args, **kwargs)
    # Arguments from_config does not take are passed through to __init__ (explicit overrides).
    supported = set(signature.parameters)
    extra = {name: kwargs.pop(name) for name in list(kwargs) if name not in supported}
    ret = from_config_func(*args, **kwargs)
    ret.update(extra)
    return ret


def configurable(init_func: Callable | None = None, *, from_config: Callable | None = None) -> Callable:
    """Decorate a class ``__init__`` (the class must define ``from_config(cls, cfg, ...)``), or a function together
    with ``from_config=``, so that it can also be called with a config as first argument."""
    if init_func is not None:
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
            raise TypeError("@configurable without arguments must decorate a class __init__")

        @functools.wraps(init_func)
        def wrapped(self, *args: Any, **kwargs: Any) -> None:
            from_config_func = getattr(type(self), "from_config", None)
            if from_config_func is None:
                raise AttributeError(f"{type(self).__name__} uses @configurable but has no from_config classmethod")
            if not inspect.ismethod(from_config_func):
                raise TypeError(f"{type(self).__name__}.from_config must be a classmethod")
            if _called_with_cfg(*args, **kwargs):
                explicit = _get_args_from_config(from_config_func, *args, **kwargs)
                init_func(self, **explicit)
            else:
                init_func(self, *args, **kwargs)

        return wrapped

    if from_config is None:
        return configurable  # @configurable() with no arguments
    if not inspect.isfunction(from_config):
        raise TypeError("from_config= must be a function")

    def decorator(orig_func: Callable) -> Callable:
        @functools.wraps(orig_func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if _called_with_cfg(*args, **kwargs):
                return orig_func(**_get_args_from_config(from_config, *args, **kwargs))
            return orig_func(*args, **kwargs)

        wrapped.from_config = from_config  # type: ignore[attr-defined]
        return wrapped

    return decorator
