"""Configuration, in both forms library code reads (:mod:`detlightning.config.reader`):

* ``get_cfg()``: detectron2's ``CfgNode`` with detectron2's defaults, as ``detectron2.config.get_cfg`` returns it
  (``merge_from_file`` with ``_BASE_``, ``merge_from_list``, upper-case keys); ``get_d2_cfg`` is the same function;
* ``LazyConfig.load("x.py")``: detectron2's Python configs (``LazyCall`` / ``instantiate``), for the models
  defined that way (new_baselines, ViTDet, FCOS);
* ``compose(overrides)``: detlightning's Hydra config (``detlightning/conf`` groups, lower-case keys), what the
  scripts and the Lightning engine run on.

:mod:`detlightning.config.d2_compat` converts a detectron2 config into the Hydra one where a script needs it.
"""
from .cfg_node import CfgNode
from .config import CONFIG_MODULE, compose
from .configurable import configurable, is_config
from .d2_compat import D2_KEY_MAP, apply_d2_config, load_d2_config, to_detlightning_cfg, unsupported_d2_keys
from .d2_defaults import get_d2_cfg
from .instantiate import LazyCall, instantiate
from .lazy import LazyConfig
from .reader import cfg_get, cfg_view

get_cfg = get_d2_cfg  # detectron2's name and meaning: a fresh CfgNode with detectron2's defaults

__all__ = [
    "CONFIG_MODULE",
    "CfgNode",
    "D2_KEY_MAP",
    "LazyCall",
    "LazyConfig",
    "apply_d2_config",
    "cfg_get",
    "cfg_view",
    "compose",
    "configurable",
    "get_cfg",
    "get_d2_cfg",
    "instantiate",
    "is_config",
    "load_d2_config",
    "to_detlightning_cfg",
    "unsupported_d2_keys",
]
