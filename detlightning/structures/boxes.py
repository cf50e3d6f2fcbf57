"""Axis-aligned boxes: ``BoxMode`` conversions, the ``Boxes`` container and pairwise box metrics."""
from __future__ import annotations

import math
from enum import IntEnum, unique
from typing import Any, List, Union

import numpy as np
import torch

from ..layers.wrappers import is_exporting

__all__ = [
    "BoxMode",
    "Boxes",
    "pairwise_intersection",
    "pairwise_iou",
    "pairwise_ioa",
    "pairwise_point_box_distance",
    "matched_pairwise_iou",
    "matched_boxlist_iou",
]

RawBoxType = Union[list, tuple, torch.Tensor, np.ndarray]
# TorchScript resolves some annotations by plain name only (a property, a class compiled from another class)
Device = torch.device


class UnsupportedBoxModeError(ValueError, AssertionError):
    """A relative box mode was requested.

    d2-parity: detectron2 signals this with a failing ``assert``; subclassing both keeps ``except AssertionError``
    callers working while following our ValueError convention.
    """


@unique
class BoxMode(IntEnum):
    """How the numbers of a box are to be read.

    - ``XYXY_ABS``: (x0, y0, x1, y1) in absolute pixels.
    - ``XYWH_ABS``: (x0, y0, w, h) in absolute pixels (the COCO json convention).
    - ``XYXY_REL`` / ``XYWH_REL``: relative to the image size in [0, 1]; not supported by ``convert``.
    - ``XYWHA_ABS``: (xc, yc, w, h, angle) of a rotated box, angle in degrees counter-clockwise.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: RawBoxType, from_mode: BoxMode | int, to_mode: BoxMode | int) -> RawBoxType:
        """Convert ``box`` from ``from_mode`` to ``to_mode``; the result has the input's type (and dtype).

        ``box`` is a k-list/k-tuple (one box), or a (k,) / (N, k) ndarray or tensor, with k = 4 or 5.
        The input is never modified.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box

        original_type = type(box)
        single_box = isinstance(box, (list, tuple))
        is_numpy = isinstance(box, np.ndarray)
        squeeze = False
        if single_box:
            if len(box) not in (4, 5):
                raise ValueError(
                    "BoxMode.convert takes a k-tuple/list or an (N, k) array/tensor with k == 4 or 5, "
                    f"got a {original_type.__name__} of length {len(box)}"
                )
            arr = torch.tensor(box)[None, :]
        elif is_numpy:
            arr = torch.from_numpy(np.asarray(box)).clone()
        elif isinstance(box, torch.Tensor):
            arr = box.clone()
        else:
            raise TypeError(f"BoxMode.convert expects a list, tuple, np.ndarray or torch.Tensor, got {original_type}")
        if not single_box:
            if arr.dim() == 1:
                arr, squeeze = arr[None, :], True
            if arr.dim() != 2 or arr.shape[-1] not in (4, 5):
                raise ValueError(f"BoxMode.convert expects boxes of shape (N, 4) or (N, 5), got {tuple(arr.shape)}")

        relative = (BoxMode.XYXY_REL, BoxMode.XYWH_REL)
        if from_mode in relative or to_mode in relative:
            raise UnsupportedBoxModeError(
                f"Relative box modes are not supported (converting {from_mode.name} to {to_mode.name})"
            )

        if from_mode == BoxMode.XYWHA_ABS and to_mode == BoxMode.XYXY_ABS:
            if arr.shape[-1] != 5:
                raise ValueError(f"XYWHA_ABS boxes need 5 numbers per box, got shape {tuple(arr.shape)}")
            original_dtype = arr.dtype
            arr = arr.double()
            w, h, a = arr[:, 2], arr[:, 3], arr[:, 4]
            cos = torch.abs(torch.cos(a * math.pi / 180.0))
            sin = torch.abs(torch.sin(a * math.pi / 180.0))
            # size of the horizontal rectangle enclosing the rotated box
            new_w = cos * w + sin * h
            new_h = cos * h + sin * w
            x0 = arr[:, 0] - new_w / 2.0
            y0 = arr[:, 1] - new_h / 2.0
            arr = torch.stack([x0, y0, x0 + new_w, y0 + new_h], dim=1).to(dtype=original_dtype)
        elif from_mode == BoxMode.XYWH_ABS and to_mode == BoxMode.XYWHA_ABS:
            original_dtype = arr.dtype
            arr = arr.double()
            arr[:, 0] += arr[:, 2] / 2.0
            arr[:, 1] += arr[:, 3] / 2.0
            angles = torch.zeros((arr.shape[0], 1), dtype=arr.dtype, device=arr.device)
            arr = torch.cat((arr, angles), dim=1).to(dtype=original_dtype)
        elif from_mode == BoxMode.XYWH_ABS and to_mode == BoxMode.XYXY_ABS:
            arr[:, 2] += arr[:, 0]
            arr[:, 3] += arr[:, 1]
        elif from_mode == BoxMode.XYXY_ABS and to_mode == BoxMode.XYWH_ABS:
            arr[:, 2] -= arr[:, 0]
            arr[:, 3] -= arr[:, 1]
        else:
            raise NotImplementedError(f"Conversion from BoxMode {from_mode.name} to {to_mode.name} is not supported")

        if single_box:
            return original_type(arr.flatten().tolist())
        if squeeze:
            arr = arr[0]
        return arr.numpy() if is_numpy else arr


def _is_int_index(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, (int, np.integer)):
        return True
    return isinstance(item, torch.Tensor) and item.dim() == 0 and not item.dtype.is_floating_point and (
        item.dtype != torch.bool
    )


def _check_boxes_list(boxes_list: Any) -> None:
    if not isinstance(boxes_list, (list, tuple)):
        raise TypeError(f"Boxes.cat expects a list or tuple of Boxes, got {type(boxes_list)}")
    for b in boxes_list:
        if not isinstance(b, Boxes):
            raise TypeError(f"Boxes.cat expects only Boxes, got an element of type {type(b)}")


class Boxes:
    """A list of N axis-aligned boxes stored as ``tensor``: (N, 4) float32 XYXY_ABS.

    Behaves like a tensor of boxes: indexing, ``len``, iteration, ``to(device)``, ``.device``.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        """``tensor``: (N, 4) XYXY boxes (in eager mode anything ``torch.as_tensor`` accepts); cast to float32.

        The annotation says ``Tensor`` so that TorchScript can compile the class (``torch.jit.script(Boxes)``).
        """
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        else:
            tensor = tensor.to(torch.float32)
        # An empty input of any shape becomes (0, 4); reshape keeps it tied to the input (and its device). The shape
        # test comes first: torch.export cannot evaluate numel() == 0 for a data-dependent number of boxes.
        if (tensor.dim() != 2 or tensor.size(-1) != 4) and tensor.numel() == 0:
            tensor = tensor.reshape((-1, 4))
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects a tensor of shape (N, 4), got {list(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> Boxes:
        """A copy that shares no storage."""
        return Boxes(self.tensor.clone())

    def to(self, device: Device) -> Boxes:
        """Move to ``device``; boxes stay float32 (a dtype passed instead is undone by the float32 cast)."""
        return Boxes(self.tensor.to(device))

    def area(self) -> torch.Tensor:
        """(N,) float areas ``(x1 - x0) * (y1 - y0)`` (negative for inverted boxes, as in detectron2)."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip x to [0, width] and y to [0, height]; ``box_size`` is (height, width).

        Rebinds ``self.tensor`` to a new tensor rather than writing into shared storage (as detectron2 does now).
        """
        check_finite = True
        if not torch.jit.is_scripting():
            check_finite = not is_exporting()  # an exported graph cannot branch on the values
        if check_finite and not torch.isfinite(self.tensor).all():
            raise ValueError("Boxes.clip: the box tensor contains inf or NaN")
        h, w = box_size
        t = self.tensor
        self.tensor = torch.stack(
            (t[:, 0].clamp(min=0, max=w), t[:, 1].clamp(min=0, max=h), t[:, 2].clamp(min=0, max=w),
             t[:, 3].clamp(min=0, max=h)),
            dim=-1,
        )

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """(N,) bool: True where both width and height are larger than ``threshold``."""
        box = self.tensor
        widths = box[:, 2] - box[:, 0]
        heights = box[:, 3] - box[:, 1]
        return (widths > threshold) & (heights > threshold)

    def inside_box(self, box_size: tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """(N,) bool: True where the box lies inside (height, width) = ``box_size``, allowing
        ``boundary_threshold`` pixels of overhang."""
        height, width = box_size
        t = self.tensor
        return (
            (t[..., 0] >= -boundary_threshold)
            & (t[..., 1] >= -boundary_threshold)
            & (t[..., 2] < width + boundary_threshold)
            & (t[..., 3] < height + boundary_threshold)
        )

    def get_centers(self) -> torch.Tensor:
        """(N, 2) box centres (x, y)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale x coordinates by ``scale_x`` and y coordinates by ``scale_y``, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> Boxes:  # TorchScript reads a self-reference as a quoted name
        """Concatenate ``Boxes`` (a list, or in eager mode a tuple) into one; an empty list gives an empty
        (0, 4) ``Boxes``. Never shares storage."""
        if not torch.jit.is_scripting():
            _check_boxes_list(boxes_list)
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    @property
    def device(self) -> Device:
        return self.tensor.device

    def __getitem__(self, item) -> Boxes:  # unannotated: TorchScript reads it as a Tensor index
        """Index like a tensor; always returns ``Boxes`` (an int gives one box, shape (1, 4)).

        May share storage with ``self``, following PyTorch indexing rules. Scripted code indexes with tensors.
        """
        if not torch.jit.is_scripting():
            if _is_int_index(item):
                return Boxes(self.tensor[int(item)].view(1, -1))
            b = self.tensor[item]
            if b.dim() != 2:
                raise IndexError(
                    f"Indexing Boxes with {repr(item)} gave shape {tuple(b.shape)}, expected a (K, 4) matrix"
                )
            return Boxes(b)
        b = self.tensor[item]
        if b.dim() != 2:
            raise IndexError(f"Indexing Boxes gave shape {b.shape}, expected a (K, 4) matrix")
        return Boxes(b)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @torch.jit.unused
    def __iter__(self):  # no Iterator annotation: TorchScript parses it even on unused methods
        """Yield each box as a (4,) tensor."""
        yield from self.tensor

    def __repr__(self) -> str:
        return "Boxes(" + str(self.tensor) + ")"


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) intersection areas between every box of ``boxes1`` (N) and ``boxes2`` (M), XYXY."""
    b1, b2 = boxes1.tensor, boxes2.tensor
    width_height = torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])  # (N, M, 2)
    width_height.clamp_(min=0)
    return width_height.prod(dim=2)


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) IoU between every pair; pairs that do not intersect (incl. empty boxes) get 0."""
    area1 = boxes1.area()
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    # d2-parity: torch.where keeps 0/0 from empty boxes out of the result
    return torch.where(
        inter > 0,
        inter / (area1[:, None] + area2 - inter),
        torch.zeros(1, dtype=inter.dtype, device=inter.device),
    )


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) intersection over the area of ``boxes2`` (IoA); 0 where the pair does not intersect."""
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    return torch.where(inter > 0, inter / area2, torch.zeros(1, dtype=inter.dtype, device=inter.device))


def pairwise_point_box_distance(points: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Distances from N points (N, 2) to the 4 edges of M boxes: (N, M, 4) as (left, top, right, bottom).

    All four are positive exactly when the point lies inside the box.
    """
    x, y = points.unsqueeze(dim=2).unbind(dim=1)  # each (N, 1)
    x0, y0, x1, y1 = boxes.tensor.unsqueeze(dim=0).unbind(dim=2)  # each (1, M)
    return torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N,) IoU between ``boxes1[i]`` and ``boxes2[i]`` (the diagonal of ``pairwise_iou``)."""
    if len(boxes1) != len(boxes2):
        raise ValueError(
            f"matched_pairwise_iou needs the same number of boxes in both lists, got {len(boxes1)} and {len(boxes2)}"
        )
    area1 = boxes1.area()
    area2 = boxes2.area()
    b1, b2 = boxes1.tensor, boxes2.tensor
    lt = torch.max(b1[:, :2], b2[:, :2])
    rb = torch.min(b1[:, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area1 + area2 - inter)


# older detectron2 name of the same function
matched_boxlist_iou = matched_pairwise_iou
