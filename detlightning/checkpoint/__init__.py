"""Checkpoint saving/loading for any ``nn.Module`` with detectron2 parameter names (detectron2.checkpoint)."""
from __future__ import annotations

from .atomic import CheckpointDamagedError
from .c2_model_loading import align_and_update_state_dicts, convert_basic_c2_names, convert_c2_detectron_names
from .catalog import ModelCatalog
from .checkpointer import (
    Checkpointer,
    PeriodicCheckpointer,
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)
from .detection_checkpoint import DetectionCheckpointer
from .lightning import state_dict_from_lightning_ckpt
from .paths import get_cache_dir, get_local_path, resolve_url

__all__ = [
    "Checkpointer",
    "CheckpointDamagedError",
    "PeriodicCheckpointer",
    "DetectionCheckpointer",
    "ModelCatalog",
    "align_and_update_state_dicts",
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
    "get_missing_parameters_message",
    "get_unexpected_parameters_message",
    "state_dict_from_lightning_ckpt",
    "get_cache_dir",
    "get_local_path",
    "resolve_url",
]
