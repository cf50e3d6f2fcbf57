from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datamodule import (
    DetectionDataModule,
    EpochView,
    register_shapes_from_cfg,
    train_iters_per_epoch,
)


def test_datamodule_train_and_val(tiny_cfg):
    cfg = tiny_cfg("dataloader.ims_per_batch=2", "dataloader.train_iters_per_epoch=3")
    dm = DetectionDataModule(cfg)
    train = dm.train_dataloader()
    assert len(train) == 3
    epoch1 = [[x["image_id"] for x in b] for b in train]
    epoch2 = [[x["image_id"] for x in b] for b in train]
    assert len(epoch1) == len(epoch2) == 3 and all(len(b) == 2 for b in epoch1 + epoch2)
    # the second epoch continues the infinite stream: 12 consecutive samples, 1.5 passes over 8 images
    flat = [i for b in epoch1 + epoch2 for i in b]
    assert set(flat) == set(range(1, 9))
    assert dm.train_dataloader() is train
    val = dm.val_dataloader()
    assert isinstance(val, list) and len(val) == 1
    batch = next(iter(val[0]))
    assert isinstance(batch, list) and batch[0]["image"].dim() == 3
    assert len(dm.test_dataloader()) == 1 and len(dm.predict_dataloader()) == 1


def test_two_test_datasets_give_two_loaders(tiny_cfg):
    dm = DetectionDataModule(tiny_cfg("datasets.test=[tshapes_val,tshapes_train]"))
    lengths = [len(loader) for loader in dm.val_dataloader()]
    assert lengths == [4, 8]


def test_epoch_length_rule(tiny_cfg):
    # explicit epoch length > solver.max_iter > one pass over the images
    assert train_iters_per_epoch(tiny_cfg("dataloader.train_iters_per_epoch=5", "solver.max_iter=7"), 8) == 5
    assert train_iters_per_epoch(tiny_cfg("solver.max_iter=7"), 8) == 7
    cfg = tiny_cfg("dataloader.ims_per_batch=4", "solver.max_iter=0")
    assert train_iters_per_epoch(cfg, 8) == 2  # one pass
    assert train_iters_per_epoch(tiny_cfg("dataloader.ims_per_batch=4", "solver.max_iter=0"), 9) == 3
    with pytest.raises(ValueError):
        train_iters_per_epoch(cfg, None)


def test_epoch_view_continues():
    view = EpochView(itertools.count(), 3)
    assert list(view) == [0, 1, 2] and list(view) == [3, 4, 5] and len(view) == 3


def test_register_shapes_from_cfg_reregisters(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("datasets.shapes.prefix=t2shapes", "datasets.shapes.num_train=3", f"datasets.shapes.root={tmp_path}")
    names = register_shapes_from_cfg(cfg)
    assert "t2shapes_train" in names and "t2shapes_val_panoptic_separated" in names
    assert len(DatasetCatalog.get("t2shapes_train")) == 3
    assert MetadataCatalog.get("t2shapes_train").shapes_params["num_images"] == 3
    register_shapes_from_cfg(tiny_cfg("datasets.shapes.prefix=t2shapes", "datasets.shapes.num_train=2",
                                      f"datasets.shapes.root={tmp_path}"))  # fmt: skip
    assert len(DatasetCatalog.get("t2shapes_train")) == 2


def test_lightning_fit_consumes_batches(tiny_cfg):
    """A real Trainer drives the DataModule: the training step sees list[dict] batches."""
    import lightning.pytorch as pl
    import torch

    seen: list[int] = []

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            assert isinstance(batch, list) and isinstance(batch[0], dict)
            seen.append(len(batch))
            return (self.w - batch[0]["image"].float().mean()).pow(2)

        def validation_step(self, batch, batch_idx):
            assert isinstance(batch, list)

        def predict_step(self, batch, batch_idx):
            return [x["image_id"] for x in batch]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = DetectionDataModule(tiny_cfg("dataloader.ims_per_batch=2", "dataloader.train_iters_per_epoch=2"))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)  # fmt: skip
    module = Tiny()
    trainer.fit(module, datamodule=dm)
    assert seen == [2, 2, 2, 2]
    predictions = trainer.predict(module, datamodule=dm)
    assert [i for batch in predictions for i in batch] == [d["image_id"] for d in DatasetCatalog.get("tshapes_val")]
