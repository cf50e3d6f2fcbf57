"""Start-up check that the training datasets' classes fit the model's class counts.

A dataset of 3 categories trained by a model built for 1 fails deep inside the loss (an IndexError) or, worse,
trains silently on wrong targets. :func:`check_classes_fit_model` compares, per training dataset,

* the metadata's ``thing_classes`` count with the box/instance head's class count (``model.roi_heads.num_classes``;
  RetinaNet's ``model.retinanet.num_classes``; ``model.num_classes`` of a LazyConfig RetinaNet/FCOS);
* the metadata's ``stuff_classes`` count with ``model.sem_seg_head.num_classes`` (semantic / panoptic heads);
* without ``thing_classes`` metadata: the largest (contiguous) ``category_id`` of the annotations, read once. With
  the metadata, the loader already refuses ids >= len(thing_classes), so the count check bounds them.

Fewer model classes than the data needs is a ``ValueError`` naming both numbers and the key to set; more is a
warning (the extra classes are never trained, yet may be predicted). Plain torch: used by every training path
(``DetectionDataModule``, ``DefaultTrainer``, lazy training, ``plain_train_net.py``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from .catalog import DatasetCatalog, MetadataCatalog

__all__ = ["check_classes_fit_model", "model_class_counts", "train_dataset_names"]

logger = logging.getLogger(__name__)


def _count(module: Any) -> int | None:
    """``module.num_classes``, or the output channels of its ``predictor`` conv (semantic heads)."""
    n = getattr(module, "num_classes", None)
    if n is None:
        n = getattr(getattr(module, "predictor", None), "out_channels", None)
    return int(n) if isinstance(n, int) else None


def model_class_counts(model: nn.Module) -> list[tuple[str, str, int]]:
    """``[(metadata field, config key to set, count)]`` of the model's class-predicting heads (DDP unwrapped)."""
    model = getattr(model, "module", model)
    counts: list[tuple[str, str, int]] = []
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and _count(roi_heads) is not None:
        counts.append(("thing_classes", "model.roi_heads.num_classes (detectron2: MODEL.ROI_HEADS.NUM_CLASSES)",
                       _count(roi_heads)))  # fmt: skip
    elif isinstance(getattr(model, "num_classes", None), int):  # dense detectors: RetinaNet, FCOS
        name = type(model).__name__
        key = ("model.retinanet.num_classes (detectron2: MODEL.RETINANET.NUM_CLASSES; LazyConfig: model.num_classes)"
               if name == "RetinaNet" else f"model.num_classes (the {name} LazyConfig)")
        counts.append(("thing_classes", key, int(model.num_classes)))
    sem_seg_head = getattr(model, "sem_seg_head", None)
    if sem_seg_head is not None and _count(sem_seg_head) is not None:
        counts.append(("stuff_classes", "model.sem_seg_head.num_classes (detectron2: MODEL.SEM_SEG_HEAD.NUM_CLASSES)",
                       _count(sem_seg_head)))  # fmt: skip
    return counts


def train_dataset_names(cfg: Any) -> list[str]:
    """The training dataset names of a config: ``datasets.train``, or a LazyConfig's
    ``dataloader.train.dataset.names``; ``[]`` when it names none."""
    from ..config.reader import cfg_get

    for key in ("datasets.train", "dataloader.train.dataset.names"):
        names = cfg_get(cfg, key, None)
        if names:
            return [names] if isinstance(names, str) else [str(n) for n in names]
    return []


def _max_category_id(name: str) -> tuple[int, str] | None:
    """The largest non-crowd ``category_id`` of a registered list-of-dicts dataset, and the file it is in."""
    dicts = DatasetCatalog.get(name)
    if not isinstance(dicts, list):
        return None
    best: tuple[int, str] | None = None
    for record in dicts:
        for ann in record.get("annotations", ()):
            cid = ann.get("category_id")
            if isinstance(cid, int) and not ann.get("iscrowd", 0) and (best is None or cid > best[0]):
                best = (cid, str(record.get("file_name", "?")))
    return best


def check_classes_fit_model(model: nn.Module, dataset_names: Sequence[str]) -> None:
    """Raise ``ValueError`` when a training dataset has more classes than the model predicts (see the module
    docstring); names the dataset, both numbers and the config key to set."""
    counts = model_class_counts(model)
    for name in dataset_names:
        if name not in DatasetCatalog:
            continue  # the loader reports unregistered names with the list of registered ones
        meta = MetadataCatalog.get(name)
        for field, key, n_model in counts:
            classes = meta.get(field)
            if classes is not None:
                shown = list(classes) if len(classes) <= 8 else [*classes[:8], "..."]
                need, source = len(classes), f"{len(classes)} {field} in its metadata {shown}"
            elif field == "thing_classes":
                found = _max_category_id(name)
                if found is None:
                    continue
                need, source = found[0] + 1, f"annotations with category_id up to {found[0]} (in {found[1]})"
            else:
                continue
            if need > n_model:
                raise ValueError(
                    f"Training dataset {name!r} has {source}, but the model predicts {n_model} classes "
                    f"({key.split(' ')[0]}={n_model}): set {key} to {need}, or train on a dataset with "
                    f"{n_model} classes"
                )
            if need < n_model:
                logger.warning(
                    "Training dataset %r has %d %s but %s is %d: the extra classes are never trained",
                    name, need, field, key.split(" ")[0], n_model,
                )  # fmt: skip
