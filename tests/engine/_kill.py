"""A callback that kills its process without any cleanup (tests of resuming after a crash)."""
from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """``os._exit(code)`` as soon as ``step`` optimizer steps are done: no checkpoint, no teardown, no flush
    beyond what the other callbacks already wrote — what a SIGKILL or a pre-empted node leaves behind."""

    def __init__(self, step: int, code: int = 17) -> None:
        self.step, self.code = int(step), int(code)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os._exit(self.code)
