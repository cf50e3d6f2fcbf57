"""Configuration: Hydra config groups under ``detlightning/conf`` and helpers to compose them."""
from .config import CONFIG_MODULE, get_cfg
from .configurable import configurable, is_config

__all__ = ["CONFIG_MODULE", "configurable", "get_cfg", "is_config"]
