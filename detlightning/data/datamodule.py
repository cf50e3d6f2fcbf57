"""``DetectionDataModule``: the LightningDataModule that serves detectron2-style ``list[dict]`` batches.

The only module of ``detlightning.data`` that imports Lightning.

Epochs. detectron2 trains on one infinite stream (``TrainingSampler``) for ``solver.max_iter`` steps; Lightning
wants epochs. ``train_dataloader()`` returns a finite view of ONE persistent infinite stream: each epoch takes
the next ``iters_per_epoch`` batches, so consecutive epochs continue the sampler's sequence (no epoch restarts
the same shuffled order). ``iters_per_epoch`` is, in order of precedence:

1. ``dataloader.train_iters_per_epoch`` when set (> 0);
2. ``solver.max_iter`` when the config has it (one epoch = the whole schedule, detectron2's model);
3. about one pass over the training images: ``ceil(#registered images / ims_per_batch)``.

Validation: one loader per name in ``datasets.test`` (Lightning passes ``dataloader_idx``); test and predict use
the same loaders. All loaders shard across processes themselves, so Lightning's distributed-sampler injection
(which only touches map-style loaders) does not apply to them.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

from lightning.pytorch import LightningDataModule
from torch import nn

from detlightning.config.reader import cfg_get
from detlightning.utils import comm

from .build import build_detection_test_loader, build_detection_train_loader, total_batch_size_from_cfg
from .catalog import DatasetCatalog
from .class_check import check_classes_fit_model, train_dataset_names
from .datasets.shapes import register_shapes_from_cfg
from .validate import validate_datasets_from_cfg

__all__ = ["DetectionDataModule", "EpochView", "register_shapes_from_cfg", "train_iters_per_epoch"]

logger = logging.getLogger(__name__)


class EpochView:
    """A finite, re-iterable view of an infinite iterable: each ``iter()`` continues the same underlying iterator
    for ``length`` more items. ``len()`` is ``length``."""

    def __init__(self, iterable: Iterable[Any], length: int):
        if length <= 0:
            raise ValueError(f"EpochView length must be positive, got {length}")
        self.iterable = iterable
        self.length = length
        self._iterator: Iterator[Any] | None = None

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
        for _ in range(self.length):
            try:
                yield next(self._iterator)
            except StopIteration:
                # A finite underlying loader: start it again (only happens with custom finite loaders).
                self._iterator = iter(self.iterable)
                yield next(self._iterator)


def train_iters_per_epoch(cfg: Any, num_images: int | None = None) -> int:
    """Batches per Lightning epoch (see the module docstring for the rule)."""
    explicit = cfg_get(cfg, "dataloader.train_iters_per_epoch")
    if explicit is not None and int(explicit) > 0:
        return int(explicit)
    max_iter = cfg_get(cfg, "solver.max_iter")
    if max_iter is not None and int(max_iter) > 0:
        return int(max_iter)
    if num_images is None:
        raise ValueError(
            "Cannot tell the training epoch length: set dataloader.train_iters_per_epoch or solver.max_iter"
        )
    world_size = comm.get_world_size()
    per_process = max(total_batch_size_from_cfg(cfg) // world_size, 1)
    return max(1, math.ceil(num_images / world_size / per_process))


class DetectionDataModule(LightningDataModule):
    """Data for ``Trainer.fit/validate/test/predict`` from a detlightning config.

    Override ``build_train_loader()`` / ``build_test_loader(dataset_name)`` to customise, as one would override
    ``DefaultTrainer.build_train_loader`` in detectron2 (e.g. to pass a custom mapper)::

        class MyData(DetectionDataModule):
            def build_train_loader(self):
                return build_detection_train_loader(self.cfg, mapper=MyMapper(self.cfg, True))
    """

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self._train_view: EpochView | None = None

    def setup(self, stage: str) -> None:
        # In every process (spawned DDP workers start with fresh catalogs): the built-in shapes splits with the
        # config's parameters, before any loader or evaluator reads them.
        register_shapes_from_cfg(self.cfg)
        if stage == "fit" and cfg_get(self.cfg, "dataloader.validate", False):
            validate_datasets_from_cfg(self.cfg)  # every rank: all raise together, none waits for the others
        model = getattr(getattr(self.trainer, "lightning_module", None), "model", None)
        if stage == "fit" and isinstance(model, nn.Module):  # the data's classes fit the model (start-up check)
            check_classes_fit_model(model, train_dataset_names(self.cfg))

    # ------------------------------------------------------------------ overridable builders (detectron2 style)
    def build_train_loader(self) -> Iterable[list[dict]]:
        """The infinite training loader (default: ``build_detection_train_loader(cfg)``)."""
        return build_detection_train_loader(self.cfg)

    def build_test_loader(self, dataset_name: str) -> Iterable[list[dict]]:
        """The inference loader of one dataset (default: ``build_detection_test_loader(cfg, dataset_name)``)."""
        return build_detection_test_loader(self.cfg, dataset_name)

    # ------------------------------------------------------------------------------------- Lightning hooks
    @property
    def test_dataset_names(self) -> list[str]:
        return list(cfg_get(self.cfg, "datasets.test") or [])

    def train_dataloader(self) -> EpochView:
        """The training stream cut into epochs of ``train_iters_per_epoch(cfg)`` batches."""
        if self._train_view is None:
            loader = self.build_train_loader()
            needs_count = cfg_get(self.cfg, "dataloader.train_iters_per_epoch") in (None, 0) and cfg_get(
                self.cfg, "solver.max_iter"
            ) in (None, 0)
            length = train_iters_per_epoch(self.cfg, _count_train_images(self.cfg) if needs_count else None)
            logger.info("Training epochs are %d iterations long", length)
            self._train_view = EpochView(loader, length)
        return self._train_view

    def _test_loaders(self) -> list[Iterable[list[dict]]]:
        names = self.test_dataset_names
        if not names:
            raise ValueError("datasets.test is empty: no dataset to validate/test/predict on")
        return [self.build_test_loader(name) for name in names]

    def val_dataloader(self) -> list[Iterable[list[dict]]]:
        return self._test_loaders()

    def test_dataloader(self) -> list[Iterable[list[dict]]]:
        return self._test_loaders()

    def predict_dataloader(self) -> list[Iterable[list[dict]]]:
        return self._test_loaders()


def _count_train_images(cfg: Any) -> int:
    """Images in ``datasets.train`` as registered (before empty-image filtering: an epoch is ~one pass)."""
    return sum(len(DatasetCatalog.get(n)) for n in cfg_get(cfg, "datasets.train"))
