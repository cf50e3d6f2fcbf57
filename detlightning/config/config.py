"""Compose detlightning's Hydra config without a command line (notebooks, tests, scripts)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "detlightning.conf"

__all__ = ["CONFIG_MODULE", "config_groups", "compose", "compose_without_checks", "hydra_task_overrides"]


@contextlib.contextmanager
def _fresh_global_hydra() -> Iterator[None]:
    """Let compose() run even inside a running Hydra app (whose GlobalHydra we stash and restore)."""
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        yield
    finally:
        gh.clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def compose(overrides: Sequence[str] | None = None, config_name: str = "config") -> DictConfig:
    """detlightning's Hydra config, composed without a command line: detectron2's defaults (lower-cased keys) plus
    the selected config groups (what ``scripts/train.py`` receives for the same overrides).

    ``overrides`` use Hydra's command-line syntax, e.g. ``["model=mask_rcnn", "backbone=resnet50",
    "model.roi_heads.num_classes=3"]``. The result is in struct mode: reading or writing a key that does not exist
    raises, as does an unknown group option (Hydra's message lists the valid choices), and an override whose value
    does not have its key's type (``solver.max_iter=abc``: :class:`~detlightning.config.schema.ConfigTypeError`
    naming the key and the expected type; see :mod:`detlightning.config.schema`).
    """
    from .schema import check_override_types

    cfg = compose_without_checks(overrides, config_name)
    check_override_types(cfg, list(overrides or []), config_name=config_name)
    return cfg


def compose_without_checks(overrides: Sequence[str] | None = None, config_name: str = "config") -> DictConfig:
    """:func:`compose` without the override type check (what that check compares with)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with _fresh_global_hydra(), initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_groups() -> set[str]:
    """The config group names (``model``, ``backbone``, ``data``, ...): the folders of ``detlightning/conf``."""
    from importlib.resources import files

    return {p.name for p in files(CONFIG_MODULE).iterdir() if p.is_dir() and not p.name.startswith("_")}


def hydra_task_overrides() -> list[str]:
    """The command-line overrides of the running ``@hydra.main`` app (``[]`` outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)
