"""The one resolver that turns a config node into a component, and the public ``build_*`` entry points.

A node selects its component in one of two styles:

* ``name: StandardROIHeads`` → ``REGISTRY.get(name)(cfg, *args)``, the detectron2 way (user classes registered with
  ``@ROI_HEADS_REGISTRY.register()`` become selectable by name);
* ``_target_: my_pkg.MyHeads`` → ``hydra.utils.instantiate(node, *args)``: the node's other keys are the
  constructor's keyword arguments and the shape arguments (``input_shape``) are injected.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..utils.registry import Registry

__all__ = ["build_component"]


def build_component(registry: Registry, node: Any, cfg: DictConfig, *args: Any, **shape_kwargs: Any) -> Any:
    """Build the component that ``node`` selects from ``registry``.

    ``args`` / ``shape_kwargs`` are what the detectron2 signature passes after ``cfg`` (e.g. ``input_shape``);
    with ``_target_`` they are passed to the target as keyword arguments.
    """
    if isinstance(node, DictConfig) and "_target_" in node:
        from hydra.utils import instantiate  # noqa: PLC0415  (Hydra only where a _target_ is used)

        params = OmegaConf.to_container(node, resolve=True)
        assert isinstance(params, dict)
        params.pop("name", None)
        if len(args) > 1:
            raise TypeError(f"build_component: at most one positional shape argument (input_shape), got {len(args)}")
        # d2-style builders pass input_shape positionally; a _target_ gets it by keyword
        injected = {"input_shape": args[0]} if args else {}
        return instantiate(params, **injected, **shape_kwargs)
    name = node.name if isinstance(node, DictConfig) else node
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"config node must select a component with 'name: <registered name>' or '_target_: <import path>' "
            f"(registry {registry.name!r}), got {node!r}"
        )
    return registry.get(name)(cfg, *args, **shape_kwargs)
