"""Instance masks: full-image bitmaps (``BitMasks``), COCO polygons (``PolygonMasks``) and box-frame masks
(``ROIMasks``), plus the polygon rasterisation helpers used to build Mask R-CNN targets."""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from torchvision.ops import roi_align

from .boxes import Boxes

__all__ = [
    "BitMasks",
    "PolygonMasks",
    "ROIMasks",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
    "polygon_area",
]


def _boxes_tensor(boxes: torch.Tensor | Boxes) -> torch.Tensor:
    return boxes.tensor if isinstance(boxes, Boxes) else boxes


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area of the simple polygon with vertices (x[i], y[i]), by the shoelace formula."""
    return 0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def polygons_to_bitmask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise the union of ``polygons`` (each a flat [x0, y0, x1, y1, ...] array) with pycocotools.

    Returns a (height, width) bool ndarray; no polygon gives an all-False mask.
    """
    if len(polygons) == 0:
        # pycocotools cannot take an empty list
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects(polygons, height, width)
    rle = mask_util.merge(rles)
    return mask_util.decode(rle).astype(bool)


def rasterize_polygons_within_box(polygons: list[np.ndarray], box: np.ndarray, mask_size: int) -> torch.Tensor:
    """Rasterise one instance's ``polygons`` inside ``box`` (4-element XYXY ndarray) at (mask_size, mask_size).

    The polygons are moved into the box frame and scaled so the box spans the whole mask; this builds Mask R-CNN
    mask targets. Returns a (mask_size, mask_size) bool tensor.
    """
    box_xy = np.asarray(box[:2])
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    # max() keeps degenerate boxes from blowing the coordinates up
    scale_xy = np.array([mask_size / max(box_w, 0.1), mask_size / max(box_h, 0.1)])

    def to_box_frame(poly: np.ndarray) -> np.ndarray:
        local = np.array(poly, copy=True)  # in the polygon's own dtype; the caller's arrays stay untouched
        local -= np.resize(box_xy, local.shape)  # x0, y0, x0, y0, ... against x, y, x, y, ...
        local *= np.resize(scale_xy, local.shape)
        return local

    mask = polygons_to_bitmask([to_box_frame(poly) for poly in polygons], mask_size, mask_size)
    return torch.from_numpy(mask)


class BitMasks:
    """Per-instance full-image masks: ``tensor`` is (N, H, W) bool."""

    def __init__(self, tensor: torch.Tensor | np.ndarray) -> None:
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.bool)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.bool, device=torch.device("cpu"))
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects a tensor of shape (N, H, W), got {tuple(tensor.shape)}")
        self.image_size = tensor.shape[1:]
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> BitMasks:
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item: int | slice | torch.Tensor) -> BitMasks:
        """Index like a tensor; always returns ``BitMasks`` (an int gives one mask, shape (1, H, W))."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            return BitMasks(self.tensor[int(item)].unsqueeze(0))
        m = self.tensor[item]
        if m.dim() != 3:
            raise IndexError(f"Indexing BitMasks with {item!r} gave shape {tuple(m.shape)}, expected (K, H, W)")
        return BitMasks(m)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_instances={len(self.tensor)})"

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def nonempty(self) -> torch.Tensor:
        """(N,) bool: True for masks with at least one pixel set."""
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        """(N,) int64 number of set pixels per mask."""
        return self.tensor.flatten(1).sum(dim=1)

    @staticmethod
    def from_polygon_masks(
        polygon_masks: PolygonMasks | list[list[np.ndarray]], height: int, width: int
    ) -> BitMasks:
        """Rasterise polygons (``PolygonMasks`` or list[list[ndarray]]) into (N, height, width) bitmasks."""
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks]
        if len(masks):
            return BitMasks(torch.stack([torch.from_numpy(x) for x in masks]))
        return BitMasks(torch.empty(0, height, width, dtype=torch.bool))

    @staticmethod
    def from_roi_masks(
        roi_masks: ROIMasks,
        height: int,
        width: int,
        boxes: torch.Tensor | Boxes | None = None,
        threshold: float = 0.5,
    ) -> BitMasks:
        """Paste ``roi_masks`` into (height, width) images at ``boxes`` ((N, 4) XYXY), see ``ROIMasks.to_bitmasks``.

        detectron2's version forgets the boxes (and cannot work); here they are required.
        """
        if boxes is None:
            raise TypeError("BitMasks.from_roi_masks needs `boxes`: the (N, 4) boxes the ROI masks are defined in")
        return roi_masks.to_bitmasks(boxes, height, width, threshold)

    def crop_and_resize(self, boxes: torch.Tensor | Boxes, mask_size: int) -> torch.Tensor:
        """Crop mask i to ``boxes[i]`` ((N, 4) XYXY) and resize to (mask_size, mask_size) with ROIAlign
        (aligned=True, adaptive sampling), then threshold at 0.5. Returns (N, mask_size, mask_size) bool."""
        boxes = _boxes_tensor(boxes)
        if len(boxes) != len(self):
            raise ValueError(f"BitMasks.crop_and_resize got {len(boxes)} boxes for {len(self)} masks")
        device = self.tensor.device
        batch_inds = torch.arange(len(boxes), device=device).to(dtype=boxes.dtype)[:, None]
        rois = torch.cat([batch_inds, boxes.to(device=device)], dim=1)  # (N, 5)
        bit_masks = self.tensor.to(dtype=torch.float32)
        output = roi_align(
            bit_masks[:, None, :, :], rois.to(dtype=torch.float32), (mask_size, mask_size), 1.0, 0, True
        ).squeeze(1)
        return output >= 0.5

    def get_bounding_boxes(self) -> Boxes:
        """Tight XYXY boxes around each mask (pixel edges: a single pixel (x, y) gives [x, y, x+1, y+1]);
        an empty mask gives an all-zero box."""
        n, h, w = self.tensor.shape
        device = self.tensor.device
        if h == 0 or w == 0:
            return Boxes(torch.zeros(n, 4, dtype=torch.float32, device=device))
        x_any = self.tensor.any(dim=1)  # (N, W)
        y_any = self.tensor.any(dim=2)  # (N, H)
        xs = torch.arange(w, device=device)
        ys = torch.arange(h, device=device)
        # first / one-past-last set column and row; unset positions get sentinels that never win
        x0 = torch.where(x_any, xs, w).amin(dim=1)
        x1 = torch.where(x_any, xs, -1).amax(dim=1) + 1
        y0 = torch.where(y_any, ys, h).amin(dim=1)
        y1 = torch.where(y_any, ys, -1).amax(dim=1) + 1
        boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
        boxes = torch.where(self.nonempty()[:, None], boxes, torch.zeros_like(boxes))
        return Boxes(boxes)

    @staticmethod
    def cat(bitmasks_list: Sequence[BitMasks]) -> BitMasks:
        """Concatenate a non-empty list of ``BitMasks`` of the same image size."""
        if not isinstance(bitmasks_list, (list, tuple)) or len(bitmasks_list) == 0:
            raise ValueError("BitMasks.cat expects a non-empty list of BitMasks")
        for bm in bitmasks_list:
            if not isinstance(bm, BitMasks):
                raise TypeError(f"BitMasks.cat expects only BitMasks, got an element of type {type(bm)}")
        return type(bitmasks_list[0])(torch.cat([bm.tensor for bm in bitmasks_list], dim=0))


def _as_polygon_array(t: torch.Tensor | np.ndarray | Sequence[float], where: str) -> np.ndarray:
    # float64 for precision; polygons always live on the CPU (they are many tiny arrays)
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    arr = np.asarray(t).astype("float64")
    if arr.ndim != 1 or len(arr) % 2 != 0 or len(arr) < 6:
        raise ValueError(
            f"PolygonMasks: {where} must be a flat [x0, y0, x1, y1, ...] vector with an even number (>= 6) of "
            f"coordinates, got shape {arr.shape}"
        )
    return arr


class PolygonMasks:
    """Per-instance masks as COCO polygons: ``polygons`` is list (instances) of list (parts) of float64 ndarrays
    [x0, y0, x1, y1, ...] in absolute image coordinates."""

    def __init__(self, polygons: list[list[torch.Tensor | np.ndarray]]) -> None:
        if not isinstance(polygons, (list, tuple)):
            raise TypeError(
                "Cannot create PolygonMasks: expected a list (per instance) of lists of polygons, "
                f"got {type(polygons)}"
            )
        processed: list[list[np.ndarray]] = []
        for i, per_instance in enumerate(polygons):
            if not isinstance(per_instance, (list, tuple)):
                raise TypeError(
                    f"Cannot create PolygonMasks: instance {i} must be a list of polygons, got {type(per_instance)}"
                )
            processed.append(
                [_as_polygon_array(p, f"polygon {j} of instance {i}") for j, p in enumerate(per_instance)]
            )
        self.polygons: list[list[np.ndarray]] = processed

    def to(self, *args: Any, **kwargs: Any) -> PolygonMasks:
        """No-op: polygons stay on the CPU."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def get_bounding_boxes(self) -> Boxes:
        """Tight XYXY boxes around each instance's polygons, (N, 4) float32."""
        boxes = torch.zeros(len(self.polygons), 4, dtype=torch.float32)
        for idx, per_instance in enumerate(self.polygons):
            # d2-parity: the max starts at 0 and the min at +inf, so an instance without polygons gets
            # [inf, inf, 0, 0] and coordinates below 0 cannot lower the max
            minxy = np.full(2, np.inf, dtype=np.float32)
            maxxy = np.zeros(2, dtype=np.float32)
            if per_instance:
                coords = np.concatenate(per_instance).reshape(-1, 2).astype(np.float32)
                minxy = np.minimum(minxy, coords.min(axis=0))
                maxxy = np.maximum(maxxy, coords.max(axis=0))
            boxes[idx, :2] = torch.from_numpy(minxy)
            boxes[idx, 2:] = torch.from_numpy(maxxy)
        return Boxes(boxes)

    def nonempty(self) -> torch.Tensor:
        """(N,) bool: True for instances with at least one polygon."""
        return torch.tensor([len(p) > 0 for p in self.polygons], dtype=torch.bool)

    def __getitem__(self, item: int | slice | list[int] | torch.Tensor) -> PolygonMasks:
        """Select instances by int, slice, list of ints, bool mask or integer index tensor."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            selected = [self.polygons[int(item)]]
        elif isinstance(item, slice):
            selected = self.polygons[item]
        elif isinstance(item, list):
            selected = [self.polygons[i] for i in item]
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(item)
            if t.dtype == torch.bool:
                if t.dim() != 1 or len(t) != len(self):
                    raise IndexError(
                        f"PolygonMasks bool index must have shape ({len(self)},), got {tuple(t.shape)}"
                    )
                idx = t.nonzero().squeeze(1).cpu().tolist()
            elif t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
                idx = t.reshape(-1).cpu().tolist() if t.dim() <= 1 else None
                if idx is None:
                    raise IndexError(f"PolygonMasks index tensor must be 1-D, got shape {tuple(t.shape)}")
            else:
                raise ValueError(f"Unsupported tensor dtype={t.dtype} for indexing PolygonMasks")
            selected = [self.polygons[i] for i in idx]
        else:
            raise TypeError(f"Unsupported index type {type(item)} for PolygonMasks")
        return PolygonMasks(selected)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """Yield each instance's list of polygons."""
        return iter(self.polygons)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_instances={len(self.polygons)})"

    def __len__(self) -> int:
        return len(self.polygons)

    def crop_and_resize(self, boxes: torch.Tensor | Boxes, mask_size: int) -> torch.Tensor:
        """Rasterise instance i inside ``boxes[i]`` ((N, 4) XYXY) at (mask_size, mask_size), see
        ``rasterize_polygons_within_box``. Returns (N, mask_size, mask_size) bool on ``boxes``' device."""
        boxes = _boxes_tensor(boxes)
        if len(boxes) != len(self):
            raise ValueError(f"PolygonMasks.crop_and_resize got {len(boxes)} boxes for {len(self)} instances")
        device = boxes.device
        boxes_np = boxes.detach().to(device="cpu", dtype=torch.float32).numpy()
        results = [
            rasterize_polygons_within_box(poly, box, mask_size) for poly, box in zip(self.polygons, boxes_np)
        ]
        if len(results) == 0:
            return torch.empty(0, mask_size, mask_size, dtype=torch.bool, device=device)
        return torch.stack(results, dim=0).to(device=device)

    def area(self) -> torch.Tensor:
        """(N,) float64 polygon area per instance (shoelace; the parts of an instance are summed)."""
        areas = [
            float(sum(polygon_area(p[0::2], p[1::2]) for p in per_instance)) for per_instance in self.polygons
        ]
        return torch.tensor(areas, dtype=torch.float64)

    @staticmethod
    def cat(polymasks_list: Sequence[PolygonMasks]) -> PolygonMasks:
        """Concatenate a non-empty list of ``PolygonMasks``."""
        if not isinstance(polymasks_list, (list, tuple)) or len(polymasks_list) == 0:
            raise ValueError("PolygonMasks.cat expects a non-empty list of PolygonMasks")
        for pm in polymasks_list:
            if not isinstance(pm, PolygonMasks):
                raise TypeError(f"PolygonMasks.cat expects only PolygonMasks, got an element of type {type(pm)}")
        return type(polymasks_list[0])(list(itertools.chain.from_iterable(pm.polygons for pm in polymasks_list)))


class ROIMasks:
    """N masks, each defined inside its own box (e.g. the 28x28 Mask R-CNN predictions): ``tensor`` (N, M, M)
    float. ``to_bitmasks`` pastes them into full-image bitmasks once the boxes are known."""

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.dim() != 3:
            raise ValueError(f"ROIMasks expects a tensor of shape (N, M, M), got {tuple(tensor.shape)}")
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> ROIMasks:
        return ROIMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: Any) -> ROIMasks:
        """Index like a tensor (slices, bool masks, index tensors; an int gives one mask, shape (1, M, M))."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            return ROIMasks(self.tensor[int(item)].unsqueeze(0))
        t = self.tensor[item]
        if t.dim() != 3:
            raise ValueError(f"Indexing on ROIMasks with {item!r} returns a tensor with shape {tuple(t.shape)}!")
        return ROIMasks(t)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_instances={len(self.tensor)})"

    def to_bitmasks(
        self, boxes: torch.Tensor | Boxes, height: int, width: int, threshold: float = 0.5
    ) -> BitMasks:
        """Paste each mask into a (height, width) image at its box ((N, 4) XYXY); see ``paste_masks_in_image``."""
        # lazy: layers.mask_ops belongs to the layers package and is only needed here
        from ..layers.mask_ops import paste_masks_in_image

        bitmasks = paste_masks_in_image(self.tensor, _boxes_tensor(boxes), (height, width), threshold=threshold)
        return BitMasks(bitmasks)
