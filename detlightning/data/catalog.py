"""DatasetCatalog (name -> callable returning list[dict]) and MetadataCatalog (name -> Metadata), as in detectron2.

The dataset dicts follow detectron2's standard format: ``file_name``, ``height``, ``width``, ``image_id`` and
optionally ``annotations`` (each with ``bbox``, ``bbox_mode``, ``category_id``, ``segmentation`` as polygons or
RLE, ``keypoints``, ``iscrowd``), ``sem_seg_file_name``, ``pan_seg_file_name`` + ``segments_info``.
"""
from __future__ import annotations

import copy
import logging
import types
from collections import UserDict
from collections.abc import Callable
from typing import Any

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]

logger = logging.getLogger(__name__)


class _DatasetCatalog(UserDict):
    """A global dictionary ``name -> func`` where ``func()`` returns the dataset as ``list[dict]``.

    The callable is called on every ``get``, so it should be cheap or cache its own result; keeping only callables
    here keeps registration free (datasets that are never used are never loaded).
    """

    def register(self, name: str, func: Callable[[], Any]) -> None:
        """Register ``func`` (no arguments, returns ``list[dict]``) under ``name``; a name can be registered once."""
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a callable, got {type(func).__name__}")
        if name in self:
            raise ValueError(f"Dataset '{name}' is already registered! Call DatasetCatalog.remove('{name}') first.")
        self[name] = func

    def get(self, name: str) -> Any:  # type: ignore[override]
        """Call the registered function and return its result (usually ``list[dict]``)."""
        try:
            f = self[name]
        except KeyError as e:
            raise KeyError(
                f"Dataset '{name}' is not registered! Available datasets are: {', '.join(sorted(self.keys()))}"
            ) from e
        return f()

    def list(self) -> list[str]:
        """All registered dataset names."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the dataset ``name`` (KeyError if it is not registered)."""
        if name not in self:
            raise KeyError(f"Dataset '{name}' is not registered, cannot remove it.")
        self.pop(name)

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
DatasetCatalog.__doc__ = _DatasetCatalog.__doc__


class Metadata(types.SimpleNamespace):
    """Attributes shared by a whole dataset (``thing_classes``, ``keypoint_names``, ``evaluator_type``, ...).

    An attribute, once set, cannot be set to a different value (metadata is global, so silently overwriting it
    would let two users of a dataset disagree). Reading a missing attribute raises AttributeError listing the
    available ones.
    """

    # The name of the dataset this metadata describes.
    name: str = "N/A"

    # Old names detectron2 still understands (read and written under the new name, with a warning).
    _RENAMED = {
        "class_names": "thing_classes",
        "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
        "stuff_class_names": "stuff_classes",
    }

    def __getattr__(self, key: str) -> Any:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'!", key, self._RENAMED[key])
            return getattr(self, self._RENAMED[key])
        # Pickling and copy probe dunder attributes; answer those the normal way.
        if key.startswith("__"):
            raise AttributeError(key)
        if len(self.__dict__) > 1:
            raise AttributeError(
                f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. "
                f"Available keys are {sorted(self.__dict__.keys())}."
            )
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}': metadata is empty."
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'!", key, self._RENAMED[key])
            key = self._RENAMED[key]
        try:
            oldval = self.__dict__[key]
        except KeyError:
            super().__setattr__(key, val)
            return
        if not _same_value(oldval, val):
            raise ValueError(
                f"Attribute '{key}' in the metadata of '{self.name}' cannot be set to a different value!\n"
                f"{oldval} != {val}"
            )

    def as_dict(self) -> dict[str, Any]:
        """A shallow copy of all attributes."""
        return copy.copy(self.__dict__)

    def set(self, **kwargs: Any) -> Metadata:
        """Set several attributes at once; returns ``self``."""
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The attribute ``key`` or ``default`` when it is not set."""
        try:
            return getattr(self, key)
        except AttributeError:
            return default


def _same_value(a: Any, b: Any) -> bool:
    """Equality that tolerates tuples vs lists (YAML and JSON turn tuples into lists)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays with ambiguous truth values
        return a is b


class _MetadataCatalog(UserDict):
    """A global dictionary ``name -> Metadata``; ``get`` creates an empty Metadata for a new name."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        """The (possibly new, empty) Metadata of dataset ``name``."""
        if not name:
            raise ValueError("MetadataCatalog.get() needs a non-empty dataset name")
        r = super().get(name, None)
        if r is None:
            r = self[name] = Metadata(name=name)
        return r

    def list(self) -> list[str]:
        """Names with metadata (not necessarily registered in DatasetCatalog)."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the metadata of ``name``."""
        if name not in self:
            raise KeyError(f"No metadata for dataset '{name}', cannot remove it.")
        self.pop(name)

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
MetadataCatalog.__doc__ = _MetadataCatalog.__doc__
