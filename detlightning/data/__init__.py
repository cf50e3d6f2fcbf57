"""Data pipeline: dataset catalog, built-in datasets, augmentations, the default mapper, samplers and loaders.

``from detectron2.data import X`` ports as ``from detlightning.data import X``. ``DetectionDataModule`` (the
LightningDataModule) is imported on first access, so ``import detlightning.data`` does not load Lightning.
"""
from __future__ import annotations

from typing import Any

# Registers the built-in datasets (COCO names, shapes) as a side effect, like detectron2.
from . import datasets, samplers, transforms
from .build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper

__all__ = [
    "AspectRatioGroupedDataset",
    "DatasetCatalog",
    "DatasetFromList",
    "DatasetMapper",
    "DetectionDataModule",
    "MapDataset",
    "Metadata",
    "MetadataCatalog",
    "ToIterableDataset",
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "datasets",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "samplers",
    "transforms",
]


def __getattr__(name: str) -> Any:
    if name == "DetectionDataModule":
        from .datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(f"module 'detlightning.data' has no attribute {name!r}")
