"""Configuration: Hydra config groups under ``detlightning/conf`` and helpers to compose them; detectron2 configs
(``CfgNode``, yaml files with ``_BASE_``) read and converted in :mod:`detlightning.config.d2_compat`."""
from .cfg_node import CfgNode
from .config import CONFIG_MODULE, get_cfg
from .configurable import configurable, is_config
from .d2_compat import D2_KEY_MAP, apply_d2_config, load_d2_config, to_detlightning_cfg, unsupported_d2_keys
from .d2_defaults import get_d2_cfg

__all__ = [
    "CONFIG_MODULE",
    "CfgNode",
    "D2_KEY_MAP",
    "apply_d2_config",
    "configurable",
    "get_cfg",
    "get_d2_cfg",
    "is_config",
    "load_d2_config",
    "to_detlightning_cfg",
    "unsupported_d2_keys",
]
