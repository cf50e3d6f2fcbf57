"""Read a model's weights out of a Lightning ``.ckpt`` (no Lightning import needed).

A Lightning checkpoint is a dict ``{"state_dict": {...}, "epoch": ..., "global_step": ...,
"optimizer_states": [...], ...}`` whose ``state_dict`` is the *LightningModule*'s: the wrapped
detectron2-style model lives under an attribute (``model`` in :class:`DetectionModule`), so its keys read
``model.backbone.bottom_up.stem.conv1.weight``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .atomic import CheckpointDamagedError, newest_valid_checkpoint

__all__ = ["find_resume_ckpt", "is_lightning_checkpoint", "state_dict_from_lightning_ckpt"]

logger = logging.getLogger(__name__)


def is_lightning_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` looks like a loaded Lightning checkpoint (has a ``state_dict`` mapping, no ``model``)."""
    return isinstance(obj, Mapping) and "model" not in obj and isinstance(obj.get("state_dict"), Mapping)


def state_dict_from_lightning_ckpt(ckpt: Mapping[str, Any], prefix: str = "model.") -> dict[str, Any]:
    """The wrapped model's state dict from a loaded Lightning checkpoint.

    Args:
        ckpt: the dict ``torch.load`` returns for a ``.ckpt`` file.
        prefix: attribute path of the model inside the LightningModule, with a trailing dot.

    Returns:
        ``{key without prefix: tensor}``. Entries outside ``prefix`` (other submodules of the
        LightningModule, e.g. a loss with buffers) are left out and logged. When no key carries
        ``prefix`` the LightningModule *is* the model and the state dict is returned unchanged.
    """
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        keys = sorted(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise KeyError(f"not a Lightning checkpoint: expected a dict with a 'state_dict' mapping, got {keys}")
    if prefix and not prefix.endswith("."):
        prefix += "."
    state_dict: Mapping[str, Any] = ckpt["state_dict"]
    if not prefix or not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    dropped = sorted(k for k in state_dict if not k.startswith(prefix))
    if dropped:
        logger.info(
            "Lightning checkpoint: ignoring %d entries outside '%s': %s",
            len(dropped),
            prefix,
            ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""),
        )
    return out


def find_resume_ckpt(directory: str, last_name: str = "last.ckpt") -> str | None:
    """The checkpoint to resume training from in ``directory``: ``last_name`` if it is intact, else (reported
    by path at WARNING) the newest intact ``*.ckpt`` there; ``None`` when there is none at all.

    Raises:
        CheckpointDamagedError: there are ``.ckpt`` files but every one is damaged (starting over silently
            would overwrite the run).
    """
    if not os.path.isdir(directory):
        return None
    last = os.path.join(directory, last_name)
    others = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".ckpt")]
    if not os.path.isfile(last) and not others:
        return None
    found = newest_valid_checkpoint(last if os.path.isfile(last) else None, others)
    if found is None:
        raise CheckpointDamagedError(
            f"cannot resume: every .ckpt file in {directory} is damaged ({', '.join(sorted(others))}); "
            "remove them to start over"
        )
    return found
