"""The one way library code reads a config: a detlightning ``DictConfig`` or a detectron2-style ``CfgNode``, as given.

Built-in components read keys by their detlightning (lower-case) names. For a ``DictConfig`` that is a plain
``OmegaConf.select``. A ``CfgNode`` is read in place, never converted or copied, so a user's own registered
component receives exactly the object the user built (their ``add_<project>_config`` keys included); a key
``a.b.c`` is looked up as

1. the detectron2 key it is renamed from, when it lives elsewhere in detectron2 (``dataloader.ims_per_batch`` is
   ``SOLVER.IMS_PER_BATCH``, see ``RENAMED_D2_KEYS``);
2. ``A.B.C`` (detectron2's keys are ours upper-cased);
3. detlightning's own default (the composed default config, ``detlightning/conf``), for the keys detectron2 has no
   counterpart of (``solver.optimizer``, ``input.augmentations_train``, ...). Defaults live only in config files.

Two spellings of the same reader::

    cfg_get(cfg, "model.roi_heads.num_classes")        # one value; KeyError naming the key when absent
    view = cfg_view(cfg); view.model.roi_heads.num_classes  # attribute access, for from_config bodies
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["RENAMED_D2_KEYS", "CfgView", "cfg_get", "cfg_view", "is_cfg_node", "unwrap_cfg"]

#: detectron2 key -> detlightning key, for the keys that do not live at their lower-cased name in our config
RENAMED_D2_KEYS: dict[str, str] = {
    "SOLVER.IMS_PER_BATCH": "dataloader.ims_per_batch",  # the data loader owns the batch size
    "TEST.EVAL_PERIOD": "solver.eval_period",  # one schedule block: checkpoint_period and eval_period together
    "TEST.PRECISE_BN.ENABLED": "callbacks.precise_bn.enabled",
    "TEST.PRECISE_BN.NUM_ITER": "callbacks.precise_bn.num_iter",
    "OUTPUT_DIR": "paths.output_dir",
    "CUDNN_BENCHMARK": "trainer.benchmark",
}
_D2_NAME_OF: dict[str, str] = {ours: d2 for d2, ours in RENAMED_D2_KEYS.items()}

_ABSENT = object()


def is_cfg_node(obj: Any) -> bool:
    """True for a yacs/detectron2-style ``CfgNode`` (ours or detectron2's own)."""
    return isinstance(obj, Mapping) and type(obj).__name__ == "CfgNode"


@functools.lru_cache(maxsize=1)
def _own_defaults() -> DictConfig:
    """detlightning's default composition: where a CfgNode's missing detlightning-only keys are read from."""
    from .config import compose

    return compose([])


def _walk(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _lookup_d2(cfg: Mapping, key: str) -> Any:
    renamed = _D2_NAME_OF.get(key)
    if renamed is not None:
        value = _walk(cfg, renamed.split("."))
        if value is not _ABSENT:
            return value
    value = _walk(cfg, key.upper().split("."))
    if value is not _ABSENT:
        return value
    # a user's own lower-case key in their CfgNode
    value = _walk(cfg, key.split("."))
    if value is not _ABSENT:
        return value
    return OmegaConf.select(_own_defaults(), key, default=_ABSENT)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def cfg_get(cfg: Any, key: str, default: Any = _ABSENT) -> Any:
    """The value at dotted ``key`` (detlightning spelling) in a DictConfig, CfgNode or plain mapping.

    Nodes come back as plain ``dict`` / ``list`` (resolved). Without ``default``, an absent key raises
    ``KeyError`` naming it; with ``default``, that value is returned instead. Read from a ``CfgNode``, a node comes
    back as a :class:`CfgView` (it reads the same keys, in the same spelling, under it).
    """
    if is_cfg_node(cfg):
        cfg = CfgView(cfg)
    if isinstance(cfg, CfgView):
        return cfg.get_key(key, default)
    if isinstance(cfg, DictConfig):
        value = OmegaConf.select(cfg, key, default=_ABSENT)
    elif isinstance(cfg, Mapping):
        value = _walk(cfg, key.split("."))
    else:
        raise TypeError(f"cfg_get: expected a DictConfig, a CfgNode or a mapping, got {type(cfg).__name__}")
    if value is _ABSENT:
        if default is _ABSENT:
            raise KeyError(f"config key {key!r} is not set (and has no default in detlightning/conf)")
        return default
    return _plain(value)


class CfgView:
    """Attribute access in detlightning spelling over a detectron2 ``CfgNode``: ``view.model.roi_heads.name``
    reads ``MODEL.ROI_HEADS.NAME`` (see the module docstring for the lookup order). Leaves come back as stored
    (detectron2 stores lists as tuples); nodes as views. Read-only."""

    __slots__ = ("_cfg", "_prefix")

    def __init__(self, cfg: Mapping, prefix: str = "") -> None:
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_prefix", prefix)

    @property
    def wrapped(self) -> Mapping:
        """The CfgNode this view reads."""
        return self._cfg

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def get_key(self, key: str, default: Any = _ABSENT) -> Any:
        full = self._key(key)
        value = _lookup_d2(self._cfg, full)
        if value is _ABSENT:
            if default is _ABSENT:
                raise KeyError(f"config key {full!r} is not set (and has no default in detlightning/conf)")
            return default
        return CfgView(self._cfg, full) if isinstance(value, Mapping) else _plain(value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = self._key(name)
        value = _lookup_d2(self._cfg, full)
        if value is _ABSENT:
            raise AttributeError(f"config key {full!r} is not set (and has no default in detlightning/conf)")
        if isinstance(value, Mapping):
            return CfgView(self._cfg, full)
        return _plain(value)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError as e:
            raise KeyError(str(e)) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _lookup_d2(self._cfg, self._key(name)) is not _ABSENT

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"CfgView is read-only: set {self._key(name).upper()} on the CfgNode instead")

    def __iter__(self) -> Iterator[str]:
        node = _walk(self._cfg, self._prefix.upper().split(".")) if self._prefix else self._cfg
        return iter(k.lower() for k in node) if isinstance(node, Mapping) else iter(())

    def __repr__(self) -> str:
        return f"CfgView({self._prefix or '<root>'} of {type(self._cfg).__name__})"


def cfg_view(cfg: Any) -> Any:
    """``cfg`` readable as ``cfg.model.roi_heads.num_classes``: a ``DictConfig`` as it is, a ``CfgNode`` through a
    read-only :class:`CfgView` (no conversion, no copy), a plain dict as a ``DictConfig``."""
    if isinstance(cfg, (DictConfig, CfgView)):
        return cfg
    if is_cfg_node(cfg):
        return CfgView(cfg)
    if isinstance(cfg, Mapping):
        return OmegaConf.create(dict(cfg))
    raise TypeError(f"expected a DictConfig, a CfgNode or a mapping as config, got {type(cfg).__name__}")


def unwrap_cfg(cfg: Any) -> Any:
    """The config object itself: a :class:`CfgView`'s CfgNode, anything else unchanged (what a registered
    component receives)."""
    return cfg.wrapped if isinstance(cfg, CfgView) else cfg
