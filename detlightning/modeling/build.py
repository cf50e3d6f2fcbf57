"""The one resolver that turns a config entry into a component; every ``build_*`` function calls it.

The entry at a key (e.g. ``model.roi_heads``) selects its component in one of two styles:

* ``name: StandardROIHeads`` (or a plain string, like ``model.meta_architecture`` and detectron2's
  ``MODEL.ROI_HEADS.NAME``) → ``REGISTRY.get(name)(cfg, *args)``, the detectron2 way: user classes registered with
  ``@ROI_HEADS_REGISTRY.register()`` become selectable by name, and receive exactly the config object the caller
  passed (a detectron2 ``CfgNode`` with the user's own keys included);
* ``_target_: my_pkg.MyHeads`` → ``hydra.utils.instantiate(node, *args)``: the node's other keys are the
  constructor's keyword arguments and the shape arguments (``input_shape``) are injected.

The public ``build_*`` functions live beside their components, as in detectron2 (``modeling/backbone/build.py``,
``modeling/roi_heads/roi_heads.py``, ...).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.reader import CfgView, cfg_get, unwrap_cfg
from ..utils.registry import Registry

__all__ = ["build_component", "selected_name"]


def selected_name(cfg: Any, key: str) -> str | None:
    """The registered name the entry at ``key`` selects (``None`` for a ``_target_`` entry)."""
    node = cfg_get(cfg, key)
    if isinstance(node, (Mapping, CfgView)):
        return None if "_target_" in node else node.get("name")
    return node


def build_component(registry: Registry, key: str, cfg: Any, *args: Any, **shape_kwargs: Any) -> Any:
    """Build the component that the config entry at ``key`` selects from ``registry``.

    ``args`` / ``shape_kwargs`` are what the detectron2 signature passes after ``cfg`` (e.g. ``input_shape``);
    with ``_target_`` they are passed to the target as keyword arguments.
    """
    node = cfg_get(cfg, key)
    if isinstance(node, Mapping) and "_target_" in node:
        from hydra.utils import instantiate

        params = dict(node)
        params.pop("name", None)
        if len(args) > 1:
            raise TypeError(f"build_component: at most one positional shape argument (input_shape), got {len(args)}")
        # d2-style builders pass input_shape positionally; a _target_ gets it by keyword
        injected = {"input_shape": args[0]} if args else {}
        return instantiate(params, **injected, **shape_kwargs)
    name = selected_name(cfg, key)
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"config key {key!r} must select a component with 'name: <registered name>' or '_target_: <import "
            f"path>' (registry {registry.name!r}), got {node!r}"
        )
    return registry.get(name)(unwrap_cfg(cfg), *args, **shape_kwargs)
