"""The set-up every script shares: the config it runs with, and the datasets that config describes.

``scripts/train.py`` and ``scripts/eval.py`` get their config from ``@hydra.main``; ``demo.py``, ``export.py``,
``visualize_data.py``, ``plain_train_net.py`` and ``benchmark.py`` compose it from ``key=value`` overrides. Either way
:func:`setup_cfg` finishes it the same way:

* the overrides' values have their keys' types (``solver.max_iter=abc`` fails naming the key and the expected type,
  :mod:`detlightning.config.schema`);
* ``d2_config=<detectron2 yaml>``: the file decides the model, input, data, solver and test settings
  (:func:`detlightning.config.apply_d2_config`), except the keys given on the command line, which keep their values
  (``model.weights=...`` wins over the file's ``MODEL.WEIGHTS``);
* the built-in datasets the config parameterises (``datasets.shapes``) are registered with its parameters.

:func:`load_lazy_config` is the same for LazyConfig ``.py`` files (``lazyconfig_train_net.py`` and
``scripts/train.py lazy_config=...``).

Plain torch and Hydra's compose API only: no Lightning (``plain_train_net.py`` stays Lightning-free).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import apply_d2_config, compose
from .config.config import hydra_task_overrides
from .config.d2_compat import command_line_keys
from .config.schema import ConfigTypeError, check_override_types
from .data.datasets.shapes import register_shapes_from_cfg

__all__ = ["load_lazy_config", "setup_cfg"]

logger = logging.getLogger(__name__)


def setup_cfg(cfg_or_overrides: DictConfig | Sequence[str], overrides: Sequence[str] | None = None) -> DictConfig:
    """The config a script runs with.

    Args:
        cfg_or_overrides: the config ``@hydra.main`` composed, or Hydra-syntax overrides to compose one from
            (``["model=mask_rcnn", "model.weights=x.pth"]``).
        overrides: the command-line overrides that must win over a ``d2_config`` file; default: the Hydra app's
            task overrides for a composed config, ``cfg_or_overrides`` for a list.
    """
    if isinstance(cfg_or_overrides, DictConfig):
        cfg = cfg_or_overrides
        given = list(overrides) if overrides is not None else hydra_task_overrides()
        _check_types(cfg, given)
    else:
        given = list(cfg_or_overrides) if overrides is None else list(overrides)
        cfg = compose(list(cfg_or_overrides))
    if OmegaConf.select(cfg, "d2_config", default=None):
        cfg = apply_d2_config(cfg, keep=command_line_keys(given))
    register_shapes_from_cfg(cfg)
    return cfg


def _check_types(cfg: DictConfig, given: Sequence[str]) -> None:
    """The override type check of ``compose`` for a config ``@hydra.main`` composed (its config name when known)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    config_name = "config"
    if HydraConfig.initialized():
        config_name = HydraConfig.get().job.config_name or config_name
    try:
        check_override_types(cfg, given, config_name=config_name)
    except ConfigTypeError:
        raise
    except HydraException as e:  # an app with its own config search path: no defaults to compare with
        logger.debug("Override type check skipped: the defaults of %r do not compose here (%s)", config_name, e)


def load_lazy_config(
    config_file: str,
    overrides: Sequence[str] = (),
    output_dir: str | None = None,
    updates: Mapping[str, Any] | None = None,
) -> DictConfig:
    """The LazyConfig a script runs with: ``config_file`` is a path or a model-zoo ``.py`` name; ``overrides`` are
    Hydra-syntax ``key=value`` strings applied to it, ``updates`` a nested mapping of values (Hydra's ``lazy.*``
    keys) applied after them; ``output_dir`` (e.g. the Hydra run dir) becomes ``train.output_dir`` unless an
    override sets that key. Unknown keys are errors naming the key (see ``LazyConfig.apply_overrides``)."""
    import os

    from . import model_zoo
    from .config import LazyConfig
    from .config.lazy import apply_updates

    path = config_file if os.path.isfile(config_file) else model_zoo.get_config_file(config_file)
    cfg = LazyConfig.load(path)
    overrides = [str(o) for o in overrides]
    LazyConfig.apply_overrides(cfg, overrides)
    flat = apply_updates(cfg, updates or {})
    sets_output = "train.output_dir" in flat or any(
        o.lstrip("+").split("=", 1)[0] == "train.output_dir" for o in overrides
    )
    if output_dir is not None and not sets_output and "train" in cfg:
        cfg.train.output_dir = output_dir
    return cfg
