"""Lightning ``.ckpt`` files written crash-safely (temp file in the destination folder, fsync, rename).

Lightning's own ``TorchCheckpointIO`` stages a local checkpoint in ``$TMPDIR`` and moves it into place; when
``$TMPDIR`` is another file system (tmpfs ``/tmp``, ``/dev/shm``, a network home) that move is a copy, and a kill
during it leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes local files with
:func:`detlightning.checkpoint.atomic.atomic_torch_save` instead; remote URLs (``s3://`` ...) keep Lightning's path.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint.atomic import atomic_torch_save, remove_stale_temp_files

__all__ = ["AtomicCheckpointIO", "use_atomic_checkpoint_io"]

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are all-or-nothing: a kill or a full disk during a save leaves
    the previous file intact and no truncated one; leftovers of killed writers are removed at the first save
    into a folder."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[str] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        fs = get_filesystem(path)
        if "file" not in fs.protocol:  # object stores have their own atomic uploads
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options for a local file ({path})")
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if directory not in self._cleaned:
            remove_stale_temp_files(directory)
            self._cleaned.add(directory)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as e:
            logger.error("Saving checkpoint %s failed (%s); the previous checkpoints are unchanged", path, e)
            raise


def use_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Make ``trainer`` save ``.ckpt`` files with :class:`AtomicCheckpointIO` when it uses Lightning's default
    ``TorchCheckpointIO`` (a user-supplied CheckpointIO, or a strategy with its own, is left alone)."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
