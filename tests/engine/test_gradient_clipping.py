"""solver.clip_gradients in the Lightning engine: the optimizer from build_optimizer clips in its step(), and a
DetectionModule whose build_optimizer returns a plain optimizer is clipped by configure_gradient_clipping."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from detlightning.config import compose
from detlightning.data import DetectionDataModule
from detlightning.engine import DetectionModule

from .conftest import tiny_overrides


class _GradProbe(pl.Callback):
    """The largest |grad| after each optimizer step (grads keep their clipped values until the next zero_grad)."""

    def __init__(self) -> None:
        self.max_abs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.abs().max() for p in pl_module.parameters() if p.grad is not None]
        self.max_abs.append(float(torch.stack(grads).max()))


class _PlainSGD(DetectionModule):
    @classmethod
    def build_optimizer(cls, cfg, model):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)


@pytest.mark.parametrize("module_cls", [DetectionModule, _PlainSGD], ids=["build_optimizer", "own_optimizer"])
def test_gradients_are_clipped_to_the_configured_value(shapes_root: Path, module_cls) -> None:
    clip = 1e-5
    cfg = compose(tiny_overrides(shapes_root) + [
        "solver.clip_gradients.enabled=true", "solver.clip_gradients.clip_type=value",
        f"solver.clip_gradients.clip_value={clip}", "solver.max_iter=2",
    ])
    probe = _GradProbe()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                         limit_val_batches=0)  # fmt: skip
    trainer.fit(module_cls(cfg), datamodule=DetectionDataModule(cfg))
    assert len(probe.max_abs) == 2
    assert all(0 < m <= clip * (1 + 1e-6) for m in probe.max_abs), probe.max_abs
