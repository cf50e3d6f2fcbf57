"""A callback that kills its process without any cleanup (tests of resuming after a crash)."""
from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """``os._exit(code)`` (``sigkill``: SIGKILL to itself) as soon as ``step`` optimizer steps are done: no
    checkpoint, no teardown, no flush beyond what the other callbacks already wrote — what a SIGKILL or a
    pre-empted node leaves behind."""

    def __init__(self, step: int, code: int = 17, sigkill: bool = False) -> None:
        self.step, self.code, self.sigkill = int(step), int(code), bool(sigkill)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            if self.sigkill:  # kill -9: the process gets no say at all
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(self.code)
