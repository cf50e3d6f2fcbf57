"""``Instances``: the per-image bag of equally long fields (boxes, scores, classes, masks...) that models exchange."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["Instances"]


class Instances:
    """The instances (detections or annotations) of one image, stored as named fields of equal length.

    Fields are set and read as attributes (``inst.pred_boxes = Boxes(...)``, ``inst.scores``) or through
    ``set/get/has/remove``. ``len(inst)`` is the number of instances; ``inst[idx]`` indexes every field at once,
    e.g. ``inst[inst.scores > 0.9]``. Attributes starting with ``_`` are private and not fields.
    """

    def __init__(self, image_size: tuple[int, int], **kwargs: Any) -> None:
        """``image_size``: (height, width) of the image; ``kwargs``: initial fields."""
        self._image_size = image_size
        self._fields: dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        # "_fields" is looked up here only before __init__ ran (e.g. while unpickling): never recurse
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field ``name``; its length must equal that of the fields already present."""
        with warnings.catch_warnings(record=True):  # len() of a traced tensor warns; harmless here
            data_len = len(value)
        if self._fields:
            n = len(self)
            if data_len != n:
                raise ValueError(
                    f"Adding a field of length {data_len} to a Instances of length {n} (field '{name}'; "
                    f"existing fields: {list(self._fields)})"
                )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        """Whether field ``name`` exists."""
        return name in self._fields

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        """Delete field ``name``."""
        if name not in self._fields:
            raise KeyError(f"Instances has no field '{name}'; fields are {list(self._fields)}")
        del self._fields[name]

    def get(self, name: str) -> Any:
        """The value of field ``name``."""
        if name not in self._fields:
            raise KeyError(f"Instances has no field '{name}'; fields are {list(self._fields)}")
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        """The name -> value dict of all fields (the live dict: modifying it modifies this object)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        """A new ``Instances`` whose fields with a ``to`` method were called with ``to(*args, **kwargs)``."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            ret.set(k, v)
        return ret

    def __getitem__(self, item: int | slice | torch.Tensor | Any) -> Instances:
        """Index every field with ``item`` (int, slice, bool mask, index tensor); always returns ``Instances``."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            n = len(self)
            if item >= n or item < -n:
                raise IndexError(f"Instances index {item} out of range for {n} instances")
            # d2-parity: a 1-element slice keeps each field's type and leading dimension
            item = slice(int(item), None, n)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            # fields are kept equally long by set(), so the first one tells. __len__() rather than len(): while
            # tracing a tensor's __len__ returns a traced size, which len() would freeze into a constant.
            return v.__len__()
        raise NotImplementedError("Empty Instances does not support __len__: it has no fields yet")

    def __iter__(self):
        raise NotImplementedError("`Instances` object is not iterable!")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenate ``Instances`` of the same image size field by field.

        Tensors go through ``torch.cat``, lists are chained, and other types need a ``cat`` class/static method
        (``Boxes``, ``BitMasks``, ``PolygonMasks``, ``Keypoints`` ...).
        """
        if not isinstance(instance_lists, (list, tuple)) or len(instance_lists) == 0:
            raise ValueError("Instances.cat expects a non-empty list of Instances")
        for i in instance_lists:
            if not isinstance(i, Instances):
                raise TypeError(f"Instances.cat expects only Instances, got an element of type {type(i)}")
        if len(instance_lists) == 1:
            return instance_lists[0]

        first, *rest = instance_lists
        mismatched = [inst.image_size for inst in rest if not _same_size(inst.image_size, first.image_size)]
        if mismatched:
            raise ValueError(f"Instances.cat: image sizes differ, {mismatched[0]} vs {first.image_size}")
        joined = Instances(first.image_size)
        for name in first._fields:
            joined.set(name, _concat_field(name, [inst.get(name) for inst in instance_lists]))
        return joined

    def __str__(self) -> str:
        n = len(self) if self._fields else 0
        s = self.__class__.__name__ + "("
        s += f"num_instances={n}, "
        s += f"image_height={self._image_size[0]}, "
        s += f"image_width={self._image_size[1]}, "
        s += "fields=[{}])".format(", ".join(f"{k}: {v}" for k, v in self._fields.items()))
        return s

    __repr__ = __str__


def _same_size(a: Any, b: Any) -> bool:
    """Whether two image sizes are equal; sizes are (h, w) tuples, or (2,) tensors in a traced model (where the
    comparison cannot be recorded and is skipped: every level of one image shares its size)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b or torch.jit.is_tracing() or torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def _concat_field(name: str, parts: list[Any]) -> Any:
    """Join one field of several Instances along the first axis: tensors, lists, or a type with a ``cat``
    classmethod (Boxes, masks, Keypoints, ...)."""
    head = parts[0]
    if isinstance(head, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(head, list):
        return [item for part in parts for item in part]
    concat = getattr(type(head), "cat", None)
    if concat is None:
        raise ValueError(f"Unsupported type {type(head)} for concatenation (field '{name}')")
    return concat(parts)
