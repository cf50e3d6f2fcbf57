"""Child process of the crash tests: saves big checkpoints into a folder until it is killed.

    python -m tests.checkpoint._save_loop pth DIR        DetectionCheckpointer + PeriodicCheckpointer, forever
    python -m tests.checkpoint._save_loop ckpt DIR       Lightning fit saving model_XXXXXXX.ckpt + last.ckpt each step
    python -m tests.checkpoint._save_loop resume DIR CKPT   continue the ``ckpt`` run for one step from CKPT
    python -m tests.checkpoint._save_loop fsize DIR      save under a file-size limit (the OS refuses big writes)
"""
from __future__ import annotations

import itertools
import os
import resource
import signal
import sys

import torch
from torch import nn

BIG = (2048, 4096)  # 32 MiB of float32: the write takes long enough to be killed in the middle


class BigModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(*BIG[::-1], bias=True)


def _pth(directory: str) -> None:
    from detlightning.checkpoint import DetectionCheckpointer, PeriodicCheckpointer

    model = BigModel()
    periodic = PeriodicCheckpointer(DetectionCheckpointer(model, directory, save_to_disk=True), period=1,
                                    max_to_keep=2)
    for i in itertools.count():
        with torch.no_grad():
            model.head.weight.fill_(float(i))
        periodic.step(i)
        print("saved", i, flush=True)


def _lightning_module() -> object:
    from lightning.pytorch import LightningModule

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = BigModel()

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return (self.model.head.bias * batch).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader([torch.ones(BIG[0])], batch_size=1)

    return Module()


def _trainer(directory: str, max_steps: int) -> object:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from detlightning.engine.callbacks import PeriodicCheckpointer

    return Trainer(
        max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=directory,
        callbacks=[
            ModelCheckpoint(dirpath=directory, filename="model_{step:07d}", every_n_train_steps=1, save_top_k=2,
                            monitor="step", mode="max", save_last=True),
            PeriodicCheckpointer(period=0, dirpath=directory, save_final=False),  # installs the atomic .ckpt IO
        ],
    )


def main(argv: list[str]) -> None:
    mode, directory = argv[0], argv[1]
    if mode == "pth":
        _pth(directory)
    elif mode == "ckpt":
        _trainer(directory, 10**6).fit(_lightning_module())
    elif mode == "resume":
        step = int(torch.load(argv[2], map_location="cpu", weights_only=False)["global_step"])
        trainer = _trainer(directory, step + 1)
        trainer.fit(_lightning_module(), ckpt_path=argv[2])
        print("resumed from step", step, "to", trainer.global_step, flush=True)
    elif mode == "fsize":
        from detlightning.checkpoint import DetectionCheckpointer

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        ckpt = DetectionCheckpointer(BigModel(), directory, save_to_disk=True)
        failures = 0
        for name in ("model_0000000", "model_0000001"):
            try:
                ckpt.save(name, iteration=1)
            except OSError as e:
                print("failed:", e, flush=True)
                failures += 1
        sys.exit(0 if failures == 2 else 3)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
