"""Draw detections, segmentations, keypoints and dataset annotations on images (detectron2's ``Visualizer``).

    v = Visualizer(image_rgb, MetadataCatalog.get("coco_2017_val"), scale=1.0)
    out = v.draw_instance_predictions(outputs["instances"].to("cpu"))   # -> VisImage
    out.save("pred.png"); rgb = out.get_image()                          # (H*scale, W*scale, 3) uint8 RGB

The API and drawing style follow detectron2 (same method names and arguments, colours given matplotlib-style:
"g", "white", "#ff8800" or RGB floats in [0, 1]; sizes in points of a 100-dpi figure, so labels and lines come
out the same size as detectron2's). Rendering uses PIL instead of matplotlib: vector shapes (boxes, polygons,
lines, keypoints) are rasterised with 4x supersampling for smooth edges, bit masks are alpha-blended per pixel with
a contour band, labels are drawn on a translucent dark box. ``VisImage`` therefore has no ``fig``/``ax``.

This module only duck-types detlightning's structures (``Boxes``/``BitMasks``/``Keypoints`` via ``.tensor``,
``PolygonMasks`` via ``.polygons``, ``Instances`` via ``.has()``), so ``utils`` stays at the bottom of the
dependency graph. ``metadata`` is any object with ``.get(key, default)`` (a ``MetadataCatalog`` entry).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from enum import Enum, unique
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ._raster import (
    ColorSpec,
    GenericMask,
    as_points,
    change_color_brightness,
    connected_components,
    dash_pattern,
    dataset_box_xyxy,
    mask_boundary,
    read_label_png,
    text_patch,
    to_numpy,
    to_rgb,
    to_rgb255,
)
from .colormap import random_color

__all__ = ["ColorMode", "GenericMask", "VisImage", "Visualizer"]

logger = logging.getLogger(__name__)

_SMALL_OBJECT_AREA_THRESH = 1000
_LARGE_MASK_AREA_THRESH = 120000
_OFF_WHITE = (1.0, 1.0, 240.0 / 255)
_BLACK = (0.0, 0.0, 0.0)
_RED = (1.0, 0.0, 0.0)
_KEYPOINT_THRESHOLD = 0.05
# detectron2 sizes fonts and lines in points of a 100-dpi matplotlib figure; this turns points into pixels
_PT = 100.0 / 72.0
_DASHES = {"--": (3.7, 1.6), "dashed": (3.7, 1.6), ":": (1.0, 1.65), "dotted": (1.0, 1.65),
           "-.": (6.4, 1.6, 1.0, 1.6), "dashdot": (6.4, 1.6, 1.0, 1.6)}  # fmt: skip  (in line widths)


@unique
class ColorMode(Enum):
    """How instances are coloured.

    - ``IMAGE``: a random palette colour per instance, masks at low opacity.
    - ``SEGMENTATION``: instances of one category share (jittered) ``metadata.thing_colors``, high opacity.
    - ``IMAGE_BW``: like IMAGE, but everything outside the masks is turned grey.
    """

    IMAGE = 0
    SEGMENTATION = 1
    IMAGE_BW = 2


class _NoMetadata:
    """Stands in for ``metadata=None``: every key is missing."""

    name = "__nonexist__"

    def get(self, key: str, default: Any = None) -> Any:
        return default


def _meta_get(metadata: Any, key: str, default: Any = None) -> Any:
    getter = getattr(metadata, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(metadata, key, default)


def _create_text_labels(
    classes: Sequence[int] | None,
    scores: Sequence[float] | None,
    class_names: Sequence[str] | None,
    is_crowd: Sequence[Any] | None = None,
) -> list[str] | None:
    """"name 87%" per instance (ids where a name is missing; "|crowd" appended for crowd annotations)."""
    labels = None
    if classes is not None:
        if class_names:
            labels = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in classes]
        else:
            labels = [str(i) for i in classes]
    if scores is not None:
        if labels is None:
            labels = [f"{s * 100:.0f}%" for s in scores]
        else:
            labels = [f"{lab} {s * 100:.0f}%" for lab, s in zip(labels, scores)]
    if labels is not None and is_crowd is not None:
        labels = [lab + ("|crowd" if crowd else "") for lab, crowd in zip(labels, is_crowd)]
    return labels


class VisImage:
    """The canvas: the input image resized by ``scale``, drawn on in place.

    Args:
        img: (H, W, 3) RGB values in [0, 255].
        scale: output size factor (``width``/``height`` stay the input's; drawing coordinates are input pixels).
    """

    def __init__(self, img: np.ndarray, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"VisImage: scale must be > 0, got {scale}")
        self.img = img
        self.scale = float(scale)
        self.width, self.height = int(img.shape[1]), int(img.shape[0])
        self._out_size = (max(int(round(self.width * self.scale)), 1), max(int(round(self.height * self.scale)), 1))
        self.reset_image(img)

    def reset_image(self, img: np.ndarray) -> None:
        """Replace the canvas with ``img`` (same size as the input image), dropping everything drawn."""
        pil = Image.fromarray(np.ascontiguousarray(np.asarray(img).clip(0, 255).astype(np.uint8)), "RGB")
        if pil.size != self._out_size:
            pil = pil.resize(self._out_size, Image.BILINEAR)
        self._pil = pil

    def save(self, filepath: Any) -> None:
        """Write the image; the format follows the extension (.png, .jpg, ...)."""
        self._pil.save(filepath)

    def get_image(self) -> np.ndarray:
        """(H * scale, W * scale, 3) uint8 RGB copy of the canvas."""
        return np.array(self._pil, dtype=np.uint8)

    def paste_color(self, color: tuple[int, int, int], origin: tuple[int, int], alpha: Image.Image) -> None:
        """Blend ``color`` into the canvas through the "L" coverage image ``alpha`` placed at ``origin`` (x, y)."""
        x, y = origin
        self._pil.paste(color, (x, y, x + alpha.width, y + alpha.height), alpha)


class Visualizer:
    """Draws detection/segmentation data on an image: primitives (``draw_text``, ``draw_box``, ``draw_line``,
    ``draw_circle``, ``draw_polygon``, ``draw_binary_mask``, ``draw_soft_mask``) and composites
    (``draw_instance_predictions``, ``draw_sem_seg``, ``draw_panoptic_seg``, ``draw_dataset_dict``,
    ``overlay_instances``). Every method draws on ``self.output`` and returns it.

    Args:
        img_rgb: (H, W, 3) RGB image with values in [0, 255] (ndarray or tensor; (H, W) grey is accepted).
        metadata: dataset metadata (``thing_classes``, ``thing_colors``, ``stuff_classes``, ``stuff_colors``,
            ``keypoint_names``, ``keypoint_connection_rules``, ...), e.g. ``MetadataCatalog.get(name)``.
        scale: the output image is ``scale`` times the input's size.
        instance_mode: a :class:`ColorMode`.
    """

    def __init__(self, img_rgb: Any, metadata: Any = None, scale: float = 1.0,
                 instance_mode: ColorMode = ColorMode.IMAGE):
        img = to_numpy(img_rgb)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise ValueError(f"Visualizer expects an (H, W, 3) RGB image, got shape {img.shape}")
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        self.img = np.asarray(img[:, :, :3]).clip(0, 255).astype(np.uint8)
        self.metadata = metadata if metadata is not None else _NoMetadata()
        self.output = VisImage(self.img, scale=scale)
        self.cpu_device = torch.device("cpu")
        # too small texts are useless: at least 10 points (at scale 1)
        self._default_font_size = max(np.sqrt(self.output.height * self.output.width) // 90, 10 // scale)
        self._instance_mode = instance_mode
        self.keypoint_threshold = _KEYPOINT_THRESHOLD

    # ------------------------------------------------------------------------------------------ composites
    def draw_instance_predictions(self, predictions: Any) -> VisImage:
        """Draw a model's ``Instances``: ``pred_boxes``, ``pred_classes`` + ``scores`` (as "name 93%"),
        ``pred_masks`` ((N, H, W) bool/0-1), ``pred_keypoints`` ((N, K, 3) x, y, score) — whichever exist."""
        boxes = predictions.pred_boxes if predictions.has("pred_boxes") else None
        scores = to_numpy(predictions.scores).tolist() if predictions.has("scores") else None
        classes = to_numpy(predictions.pred_classes).astype(int).tolist() if predictions.has("pred_classes") else None
        labels = _create_text_labels(classes, scores, _meta_get(self.metadata, "thing_classes"))
        keypoints = predictions.pred_keypoints if predictions.has("pred_keypoints") else None
        masks = to_numpy(predictions.pred_masks) if predictions.has("pred_masks") else None

        thing_colors = _meta_get(self.metadata, "thing_colors")
        if self._instance_mode == ColorMode.SEGMENTATION and thing_colors and classes is not None:
            colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in classes]
            alpha = 0.8
        else:
            colors = None
            alpha = 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(masks.any(axis=0) if masks is not None and len(masks)
                                                                 else None))
            alpha = 0.3
        self.overlay_instances(masks=masks, boxes=boxes, labels=labels, keypoints=keypoints,
                               assigned_colors=colors, alpha=alpha)
        return self.output

    def draw_sem_seg(self, sem_seg: Any, area_threshold: int | None = None, alpha: float = 0.8) -> VisImage:
        """Draw a semantic segmentation (H, W) of integer labels, largest region first, each with its
        ``stuff_classes`` name. Labels outside ``stuff_classes`` (e.g. 255 = ignore) are not drawn; without
        ``stuff_classes`` every label but ``ignore_label`` is drawn with its number."""
        sem = to_numpy(sem_seg)
        if sem.ndim != 2:
            raise ValueError(f"draw_sem_seg expects an (H, W) label map, got shape {sem.shape}")
        labels, areas = np.unique(sem, return_counts=True)
        labels = labels[np.argsort(-areas, kind="stable")]
        names = _meta_get(self.metadata, "stuff_classes")
        colors = _meta_get(self.metadata, "stuff_colors")
        ignore = _meta_get(self.metadata, "ignore_label", 255)
        for label in labels.tolist():
            if names is not None:
                if not 0 <= label < len(names):
                    continue
                text = names[label]
            elif label < 0 or label == ignore:
                continue
            else:
                text = str(label)
            color = [x / 255 for x in colors[label]] if colors is not None and 0 <= label < len(colors) else None
            self.draw_binary_mask(sem == label, color=color, edge_color=_OFF_WHITE, text=text, alpha=alpha,
                                  area_threshold=area_threshold)
        return self.output

    def draw_panoptic_seg(self, panoptic_seg: Any, segments_info: list[dict] | None,
                          area_threshold: int | None = None, alpha: float = 0.7) -> VisImage:
        """Draw a panoptic segmentation: ``panoptic_seg`` (H, W) segment ids; ``segments_info`` one dict per
        segment (``id``, ``category_id``, ``isthing``, optional ``score``/``iscrowd``), or None to decode
        ``category_id = id // metadata.label_divisor``. Stuff segments first (labels from ``stuff_classes``),
        then things as instances (labels from ``thing_classes``)."""
        seg = to_numpy(panoptic_seg).astype(np.int64)
        if seg.ndim != 2:
            raise ValueError(f"draw_panoptic_seg expects an (H, W) id map, got shape {seg.shape}")
        ids, areas = np.unique(seg, return_counts=True)
        order = np.argsort(-areas, kind="stable")
        ids, areas = ids[order], areas[order]
        sinfo = self._panoptic_segments(ids, segments_info)
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(np.isin(seg, list(sinfo))))

        stuff_names = _meta_get(self.metadata, "stuff_classes")
        stuff_colors = _meta_get(self.metadata, "stuff_colors")
        things = []
        for sid in ids.tolist():
            info = sinfo.get(sid)
            if info is None:  # e.g. id 0 of Panoptic FPN: no prediction
                continue
            if info["isthing"]:
                things.append((sid, info))
                continue
            cat = int(info["category_id"])
            color = [x / 255 for x in stuff_colors[cat]] if stuff_colors and 0 <= cat < len(stuff_colors) else None
            text = stuff_names[cat] if stuff_names and 0 <= cat < len(stuff_names) else str(cat)
            self.draw_binary_mask(seg == sid, color=color, edge_color=_OFF_WHITE, text=text, alpha=alpha,
                                  area_threshold=area_threshold)
        if not things:
            return self.output
        masks = [seg == sid for sid, _ in things]
        cats = [int(info["category_id"]) for _, info in things]
        scores = [info["score"] for _, info in things] if all("score" in info for _, info in things) else None
        labels = _create_text_labels(cats, scores, _meta_get(self.metadata, "thing_classes"),
                                     [info.get("iscrowd", 0) for _, info in things])
        thing_colors = _meta_get(self.metadata, "thing_colors")
        colors = None
        if thing_colors and all(0 <= c < len(thing_colors) for c in cats):
            colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in cats]
        self.overlay_instances(masks=masks, labels=labels, assigned_colors=colors, alpha=alpha)
        return self.output

    draw_panoptic_seg_predictions = draw_panoptic_seg  # detectron2's older name

    def _panoptic_segments(self, ids: np.ndarray, segments_info: list[dict] | None) -> dict[int, dict]:
        if segments_info is None:
            divisor = _meta_get(self.metadata, "label_divisor")
            if divisor is None:
                raise ValueError("draw_panoptic_seg(segments_info=None) needs metadata.label_divisor")
            thing_ids = set((_meta_get(self.metadata, "thing_dataset_id_to_contiguous_id") or {}).values())
            return {int(i): {"id": int(i), "category_id": int(i) // divisor, "isthing": int(i) // divisor in thing_ids}
                    for i in ids.tolist() if i != -1}
        thing_ids = set((_meta_get(self.metadata, "thing_dataset_id_to_contiguous_id") or {}).values())
        out = {}
        for s in segments_info:
            if "id" not in s or "category_id" not in s:
                raise ValueError(f"each segments_info entry needs 'id' and 'category_id', got {sorted(s)}")
            info = dict(s)
            info.setdefault("isthing", int(s["category_id"]) in thing_ids)
            out[int(s["id"])] = info
        return out

    def draw_dataset_dict(self, dic: dict[str, Any]) -> VisImage:
        """Draw one dataset dict in detectron2's format: ``annotations`` (``bbox`` + ``bbox_mode``,
        ``category_id``, ``segmentation`` as polygons or RLE, ``keypoints`` flat [x, y, v, ...], ``iscrowd``),
        ``sem_seg`` / ``sem_seg_file_name``, ``pan_seg`` / ``pan_seg_file_name`` + ``segments_info``."""
        annos = dic.get("annotations")
        if annos:
            h, w = self.output.height, self.output.width
            masks = ([GenericMask(a["segmentation"], h, w) if a.get("segmentation") else None for a in annos]
                     if any("segmentation" in a for a in annos) else None)
            keypts = None
            if any("keypoints" in a for a in annos):
                k = max(len(a.get("keypoints", [])) for a in annos) // 3
                keypts = np.zeros((len(annos), k, 3))
                for i, a in enumerate(annos):
                    if a.get("keypoints"):
                        keypts[i] = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            boxes = np.stack([dataset_box_xyxy(a) for a in annos]) if all("bbox" in a for a in annos) else None
            category_ids = [int(a["category_id"]) for a in annos]
            colors = None
            thing_colors = _meta_get(self.metadata, "thing_colors")
            if self._instance_mode == ColorMode.SEGMENTATION and thing_colors:
                colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in category_ids]
            labels = _create_text_labels(category_ids, None, _meta_get(self.metadata, "thing_classes"),
                                         [a.get("iscrowd", 0) for a in annos])
            self.overlay_instances(labels=labels, boxes=boxes, masks=masks, keypoints=keypts,
                                   assigned_colors=colors)

        sem_seg = dic.get("sem_seg")
        if sem_seg is None and dic.get("sem_seg_file_name"):
            sem_seg = read_label_png(dic["sem_seg_file_name"], "sem_seg_file_name")
        if sem_seg is not None:
            self.draw_sem_seg(sem_seg, area_threshold=0, alpha=0.5)

        pan_seg = dic.get("pan_seg")
        if pan_seg is None and dic.get("pan_seg_file_name"):
            rgb = read_label_png(dic["pan_seg_file_name"], "pan_seg_file_name", mode="RGB").astype(np.int64)
            pan_seg = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]  # COCO panoptic id encoding
        if pan_seg is not None:
            if "segments_info" not in dic:
                raise KeyError("draw_dataset_dict: a dict with pan_seg / pan_seg_file_name needs 'segments_info'")
            self.draw_panoptic_seg(pan_seg, dic["segments_info"], area_threshold=0, alpha=0.5)
        return self.output

    def overlay_instances(self, *, boxes: Any = None, labels: Sequence[str] | None = None, masks: Any = None,
                          keypoints: Any = None, assigned_colors: Sequence[ColorSpec] | None = None,
                          alpha: float = 0.5) -> VisImage:
        """Draw N instances, largest first.

        Args:
            boxes: ``Boxes``, (N, 4) XYXY array/tensor, or (N, 5) rotated boxes (cx, cy, w, h, angle).
            labels: N strings.
            masks: ``BitMasks``/``PolygonMasks``, an (N, H, W) array/tensor, or a list with per instance a bit mask,
                a list of polygons, a COCO RLE dict, a :class:`GenericMask` or None.
            keypoints: ``Keypoints`` or (N, K, 3) (x, y, visibility or score).
            assigned_colors: N colours; random palette colours when None.
            alpha: mask opacity.
        """
        num = 0
        if boxes is not None:
            boxes = self._convert_boxes(boxes)
            num = len(boxes)
        if masks is not None:
            masks = self._convert_masks(masks)
            if num and len(masks) != num:
                raise ValueError(f"overlay_instances: {len(masks)} masks for {num} boxes")
            num = num or len(masks)
        if keypoints is not None:
            keypoints = self._convert_keypoints(keypoints)
            if num and len(keypoints) != num:
                raise ValueError(f"overlay_instances: {len(keypoints)} keypoint sets for {num} instances")
            num = num or len(keypoints)
        if labels is not None and len(labels) != num:
            raise ValueError(f"overlay_instances: {len(labels)} labels for {num} instances")
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(num)]
        elif len(assigned_colors) != num:
            raise ValueError(f"overlay_instances: {len(assigned_colors)} colours for {num} instances")
        if num == 0:
            return self.output
        if boxes is not None and boxes.shape[1] == 5:
            return self.overlay_rotated_instances(boxes=boxes, labels=labels, assigned_colors=assigned_colors)

        if boxes is not None:
            areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        elif masks is not None:
            areas = np.asarray([m.area() if m is not None else 0 for m in masks])
        else:
            areas = np.zeros(num)
        order = np.argsort(-areas, kind="stable").tolist()  # large first: small ones stay visible on top

        for i in order:
            color = assigned_colors[i]
            if boxes is not None:
                self.draw_box(boxes[i], edge_color=color)
            gm = masks[i] if masks is not None else None
            if gm is not None:
                if gm.is_polygon:
                    for segment in gm.polygons:
                        self.draw_polygon(segment.reshape(-1, 2), color, alpha=alpha)
                else:
                    self._draw_mask(gm.mask, color, self._polygon_edge_color(color, None, alpha), alpha)
            if labels is None:
                continue
            if boxes is not None:
                x0, y0, x1, y1 = boxes[i]
                text_pos, align = (x0, y0), "left"  # on the box's corner
            elif gm is not None and gm.area() > 0:
                x0, y0, x1, y1 = gm.bbox()
                ys, xs = np.nonzero(gm.mask)
                text_pos, align = (np.median(xs), np.median(ys)), "center"  # median: robust to thin parts
            else:
                continue  # a label for keypoints alone is not useful
            # small objects: the label goes beside them so it does not hide them
            if (y1 - y0) * (x1 - x0) < _SMALL_OBJECT_AREA_THRESH * self.output.scale or \
                    y1 - y0 < 40 * self.output.scale:
                text_pos = (x1, y0) if y1 >= self.output.height - 5 else (x0, y1)
            height_ratio = (y1 - y0) / np.sqrt(self.output.height * self.output.width)
            font_size = np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2) * 0.5 * self._default_font_size
            self.draw_text(labels[i], text_pos, color=self._change_color_brightness(color, 0.7),
                           horizontal_alignment=align, font_size=font_size)

        if keypoints is not None:
            for i in order:
                self.draw_and_connect_keypoints(keypoints[i])
        return self.output

    def overlay_rotated_instances(self, boxes: Any, labels: Sequence[str] | None = None,
                                  assigned_colors: Sequence[ColorSpec] | None = None) -> VisImage:
        """Draw (N, 5) rotated boxes (cx, cy, w, h, angle in degrees CCW) with labels, largest first."""
        boxes = self._convert_boxes(boxes)
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(len(boxes))]
        for i in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable").tolist():
            self.draw_rotated_box_with_label(boxes[i], edge_color=assigned_colors[i],
                                             label=labels[i] if labels is not None else None)
        return self.output

    def draw_and_connect_keypoints(self, keypoints: Any) -> VisImage:
        """Draw one instance's keypoints (K, 3) (x, y, score/visibility) above ``keypoint_threshold`` as red dots,
        joined by ``metadata.keypoint_connection_rules`` [(name_a, name_b, (r, g, b) 0-255), ...]; for COCO
        person keypoints also nose -> mid-shoulder -> mid-hip."""
        kps = to_numpy(keypoints).reshape(-1, 3)
        names = _meta_get(self.metadata, "keypoint_names")
        visible: dict[str, tuple[float, float]] = {}
        dots = []
        for idx, (x, y, prob) in enumerate(kps.tolist()):
            if prob > self.keypoint_threshold:
                dots.append((x, y))
                if names and idx < len(names):
                    visible[names[idx]] = (x, y)
        # lines first, dots on top
        for kp0, kp1, color in _meta_get(self.metadata, "keypoint_connection_rules") or []:
            if kp0 in visible and kp1 in visible:
                (x0, y0), (x1, y1) = visible[kp0], visible[kp1]
                self.draw_line([x0, x1], [y0, y1], color=tuple(c / 255.0 for c in color))
        if "left_shoulder" in visible and "right_shoulder" in visible:
            (lx, ly), (rx, ry) = visible["left_shoulder"], visible["right_shoulder"]
            mid_shoulder = ((lx + rx) / 2, (ly + ry) / 2)
            if "nose" in visible:
                nx, ny = visible["nose"]
                self.draw_line([nx, mid_shoulder[0]], [ny, mid_shoulder[1]], color=_RED)
            if "left_hip" in visible and "right_hip" in visible:
                (lhx, lhy), (rhx, rhy) = visible["left_hip"], visible["right_hip"]
                mid_hip = ((lhx + rhx) / 2, (lhy + rhy) / 2)
                self.draw_line([mid_hip[0], mid_shoulder[0]], [mid_hip[1], mid_shoulder[1]], color=_RED)
        for x, y in dots:
            self.draw_circle((x, y), color=_RED)
        return self.output

    # ------------------------------------------------------------------------------------------ primitives
    def draw_text(self, text: str, position: Sequence[float], *, font_size: float | None = None,
                  color: ColorSpec = "g", horizontal_alignment: str = "center", rotation: float = 0) -> VisImage:
        """Draw ``text`` with its top edge at ``position`` (x, y) on a dark translucent box.

        ``font_size`` in points (default: from the image size); ``horizontal_alignment`` "left", "center" or
        "right"; ``rotation`` in degrees CCW. Dark colours are lightened so the text stays readable."""
        if not font_size:
            font_size = self._default_font_size
        rgb = np.maximum(np.asarray(to_rgb(color)), 0.2)
        rgb[np.argmax(rgb)] = max(0.8, float(rgb.max()))
        s = self.output.scale
        patch = text_patch(str(text), int(round(font_size * s * _PT)), tuple(int(round(c * 255)) for c in rgb),
                           pad_px=max(int(round(0.7 * s * _PT)), 1))
        if rotation:
            patch = patch.rotate(rotation, resample=Image.BICUBIC, expand=True)
        x, y = float(position[0]) * s, float(position[1]) * s
        if horizontal_alignment == "center":
            x -= patch.width / 2
        elif horizontal_alignment == "right":
            x -= patch.width
        elif horizontal_alignment != "left":
            raise ValueError(f"horizontal_alignment must be 'left', 'center' or 'right', got {horizontal_alignment!r}")
        cw, ch = self.output._pil.size
        # keep labels fully inside the image where they fit (matplotlib would clip them)
        x = min(max(x, 0.0), cw - patch.width) if patch.width <= cw else x
        y = min(max(y, 0.0), ch - patch.height) if patch.height <= ch else y
        self.output._pil.paste(patch, (int(round(x)), int(round(y))), patch)
        return self.output

    def draw_box(self, box_coord: Sequence[float], alpha: float = 0.5, edge_color: ColorSpec = "g",
                 line_style: str = "-") -> VisImage:
        """Outline the XYXY box ``box_coord`` (input pixels) in ``edge_color`` at opacity ``alpha``."""
        x0, y0, x1, y1 = (float(v) for v in box_coord)
        s = self.output.scale
        lw = max(self._default_font_size / 4, 1) * s * _PT
        if line_style in _DASHES:
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            self._stroke([(px * s, py * s) for px, py in pts], lw, edge_color, alpha, line_style)
            return self.output
        X0, Y0, X1, Y1 = x0 * s, y0 * s, x1 * s, y1 * s
        h = lw / 2

        def paint(draw: ImageDraw.ImageDraw, tf: Callable, ss: int) -> None:
            draw.rectangle(_flat(tf([(X0 - h, Y0 - h), (X1 + h, Y1 + h)])), fill=255)
            if X1 - X0 > lw and Y1 - Y0 > lw:
                draw.rectangle(_flat(tf([(X0 + h, Y0 + h), (X1 - h, Y1 - h)])), fill=0)

        self._vector((X0 - h, Y0 - h, X1 + h, Y1 + h), edge_color, alpha, paint)
        return self.output

    def draw_rotated_box_with_label(self, rotated_box: Sequence[float], alpha: float = 0.5,
                                    edge_color: ColorSpec = "g", line_style: str = "-",
                                    label: str | None = None) -> VisImage:
        """Outline a rotated box (cx, cy, w, h, angle in degrees CCW); its first (top) edge is dashed to show the
        orientation. ``label`` goes at the top-left corner, rotated with the box."""
        cx, cy, w, h, angle = (float(v) for v in rotated_box)
        lw = self._default_font_size / (6 if w * h < _SMALL_OBJECT_AREA_THRESH * self.output.scale else 3)
        theta = math.radians(angle)
        c, s = math.cos(theta), math.sin(theta)
        rect = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
        corners = [(s * yy + c * xx + cx, c * yy - s * xx + cy) for xx, yy in rect]
        for k in range(4):
            j = (k + 1) % 4
            self.draw_line([corners[k][0], corners[j][0]], [corners[k][1], corners[j][1]], color=edge_color,
                           linestyle="--" if k == 1 else line_style, linewidth=lw)
        if label is not None:
            height_ratio = h / np.sqrt(self.output.height * self.output.width)
            font_size = np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2) * 0.5 * self._default_font_size
            self.draw_text(label, corners[1], color=self._change_color_brightness(edge_color, 0.7),
                           font_size=font_size, rotation=angle)
        return self.output

    def draw_circle(self, circle_coord: Sequence[float], color: ColorSpec, radius: float = 3) -> VisImage:
        """A filled circle of ``radius`` (input pixels) centred at ``circle_coord`` (x, y)."""
        s = self.output.scale
        x, y, r = float(circle_coord[0]) * s, float(circle_coord[1]) * s, float(radius) * s

        def paint(draw: ImageDraw.ImageDraw, tf: Callable, ss: int) -> None:
            draw.ellipse(_flat(tf([(x - r, y - r), (x + r, y + r)])), fill=255)

        self._vector((x - r, y - r, x + r, y + r), color, 1.0, paint)
        return self.output

    def draw_line(self, x_data: Sequence[float], y_data: Sequence[float], color: ColorSpec, linestyle: str = "-",
                  linewidth: float | None = None) -> VisImage:
        """A polyline through (x_data[i], y_data[i]); ``linewidth`` in points (default from the image size);
        ``linestyle`` "-", "--", ":" or "-."."""
        if len(x_data) != len(y_data):
            raise ValueError(f"draw_line: {len(x_data)} x values but {len(y_data)} y values")
        if linewidth is None:
            linewidth = self._default_font_size / 3
        s = self.output.scale
        pts = [(float(x) * s, float(y) * s) for x, y in zip(x_data, y_data)]
        self._stroke(pts, max(linewidth, 1) * s * _PT, color, 1.0, linestyle)
        return self.output

    def draw_binary_mask(self, binary_mask: Any, color: ColorSpec | None = None, *,
                         edge_color: ColorSpec | None = None, text: str | None = None, alpha: float = 0.5,
                         area_threshold: float | None = 10) -> VisImage:
        """Blend a binary mask (H, W) into the image in ``color`` (random when None) with a contour in
        ``edge_color``; connected components smaller than ``area_threshold`` pixels are left out; ``text`` is
        written on the largest component (and on every very large one)."""
        if color is None:
            color = random_color(rgb=True, maximum=1)
        m = self._check_mask(binary_mask, "draw_binary_mask")
        cc = None
        if area_threshold:
            cc = connected_components(m)
            keep = cc[2] >= area_threshold
            keep[0] = False
            if not keep[1:].all():
                m = keep[cc[1]]
                cc = None
        if not m.any():
            return self.output
        self._draw_mask(m, color, self._polygon_edge_color(color, edge_color, alpha), alpha)
        if text is not None:
            self._draw_text_in_mask(m, text, self._change_color_brightness(color, 0.7), cc)
        return self.output

    def draw_soft_mask(self, soft_mask: Any, color: ColorSpec | None = None, *, text: str | None = None,
                       alpha: float = 0.5) -> VisImage:
        """Blend a soft mask (H, W) of values in [0, 1] into the image; ``text`` on its > 0.5 part."""
        if color is None:
            color = random_color(rgb=True, maximum=1)
        soft = to_numpy(soft_mask).astype(np.float64)
        self._check_mask(soft > 0, "draw_soft_mask")
        self._draw_mask(soft > 0, color, None, alpha, coverage=np.clip(soft, 0.0, 1.0))
        if text is not None:
            self._draw_text_in_mask(soft > 0.5, text, self._change_color_brightness(color, 0.7), None)
        return self.output

    def draw_polygon(self, segment: Any, color: ColorSpec, edge_color: ColorSpec | None = None,
                     alpha: float = 0.5) -> VisImage:
        """Fill the polygon ``segment`` ((N, 2) points in input pixels) at opacity ``alpha`` and outline it in
        ``edge_color`` (default: ``color``, darker when ``alpha`` > 0.8)."""
        pts = as_points(segment)
        if len(pts) < 2:
            return self.output
        s = self.output.scale
        pts_out = [(float(x) * s, float(y) * s) for x, y in pts]
        xs, ys = [p[0] for p in pts_out], [p[1] for p in pts_out]
        bounds = (min(xs), min(ys), max(xs), max(ys))
        if len(pts) >= 3:
            def paint(draw: ImageDraw.ImageDraw, tf: Callable, ss: int) -> None:
                draw.polygon(tf(pts_out), fill=255)

            self._vector(bounds, color, alpha, paint)
        edge = self._polygon_edge_color(color, edge_color, alpha)
        self._stroke(pts_out + [pts_out[0]], self._polygon_edge_width(), edge, 1.0, "-")
        return self.output

    # ------------------------------------------------------------------------------------------ internals
    def _polygon_edge_width(self) -> float:
        """Contour width in output pixels (detectron2: max(font_size // 15 * scale, 1) points)."""
        return max(self._default_font_size // 15 * self.output.scale, 1) * _PT

    def _polygon_edge_color(self, color: ColorSpec, edge_color: ColorSpec | None, alpha: float) -> ColorSpec:
        if edge_color is not None:
            return edge_color
        return self._change_color_brightness(color, -0.7) if alpha > 0.8 else color

    def _check_mask(self, mask: Any, where: str) -> np.ndarray:
        m = to_numpy(mask)
        if m.shape != (self.output.height, self.output.width):
            raise ValueError(f"{where}: mask shape {m.shape} does not match the image ({self.output.height}, "
                             f"{self.output.width})")
        return m.astype(bool)

    def _vector(self, bounds: Sequence[float], color: ColorSpec, alpha: float,
                paint: Callable[[ImageDraw.ImageDraw, Callable, int], None]) -> None:
        """Rasterise what ``paint`` draws (coverage 255 = opaque) inside ``bounds`` (output pixels, XYXY) with
        supersampling, and blend ``color`` through it at opacity ``alpha``."""
        cw, ch = self.output._pil.size
        x0, y0 = max(int(math.floor(bounds[0])) - 1, 0), max(int(math.floor(bounds[1])) - 1, 0)
        x1, y1 = min(int(math.ceil(bounds[2])) + 2, cw), min(int(math.ceil(bounds[3])) + 2, ch)
        if x1 <= x0 or y1 <= y0 or alpha <= 0:
            return
        w, h = x1 - x0, y1 - y0
        ss = 4 if w * h <= 250_000 else 2 if w * h <= 2_000_000 else 1
        layer = Image.new("L", (w * ss, h * ss), 0)

        def tf(pts: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
            # sub-pixel k covers [k, k + 1); PIL puts integer coordinates on sub-pixel centres
            return [((px - x0) * ss - 0.5, (py - y0) * ss - 0.5) for px, py in pts]

        paint(ImageDraw.Draw(layer), tf, ss)
        if ss > 1:
            layer = layer.reduce(ss)
        if alpha < 1:
            layer = layer.point([int(round(v * alpha)) for v in range(256)])
        self.output.paste_color(to_rgb255(color), (x0, y0), layer)

    def _stroke(self, pts: list[tuple[float, float]], width_px: float, color: ColorSpec, alpha: float,
                linestyle: str) -> None:
        """A polyline through ``pts`` (output pixels), ``width_px`` wide, solid or dashed."""
        if len(pts) < 2:
            return
        pieces = dash_pattern(pts, [d * width_px for d in _DASHES[linestyle]]) if linestyle in _DASHES else [pts]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        pad = width_px / 2 + 1
        bounds = (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)

        def paint(draw: ImageDraw.ImageDraw, tf: Callable, ss: int) -> None:
            wpx = max(int(round(width_px * ss)), 1)
            for piece in pieces:
                draw.line(tf(piece), fill=255, width=wpx, joint="curve")

        self._vector(bounds, color, alpha, paint)

    def _draw_mask(self, mask: np.ndarray, color: ColorSpec, edge_color: ColorSpec | None, alpha: float,
                   coverage: np.ndarray | None = None) -> None:
        """Blend ``color`` over ``mask`` (H, W) bool at opacity ``alpha`` (times ``coverage`` in [0, 1] when
        given) and paint its contour band in ``edge_color`` (None: no contour). Works on the mask's bounding box
        only, so cost follows the object's size, not the image's."""
        ys = np.flatnonzero(mask.any(axis=1))
        if not len(ys):
            return
        xs = np.flatnonzero(mask.any(axis=0))
        h, w = mask.shape
        # one pixel of margin so the contour also closes along the bounding box
        y0, y1 = max(int(ys[0]) - 1, 0), min(int(ys[-1]) + 2, h)
        x0, x1 = max(int(xs[0]) - 1, 0), min(int(xs[-1]) + 2, w)
        crop = mask[y0:y1, x0:x1]
        cov = (coverage[y0:y1, x0:x1] if coverage is not None else crop).astype(np.float32)
        s = self.output.scale
        cw, ch = self.output._pil.size
        if s != 1.0:
            ox0, oy0 = int(math.floor(x0 * s)), int(math.floor(y0 * s))
            ox1, oy1 = min(max(int(math.ceil(x1 * s)), ox0 + 1), cw), min(max(int(math.ceil(y1 * s)), oy0 + 1), ch)
            size = (ox1 - ox0, oy1 - oy0)
            cov_img = Image.fromarray((cov * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
            cov = np.asarray(cov_img, dtype=np.float32) / 255.0
            crop = cov >= 0.5
        else:
            ox0, oy0 = x0, y0
        fill = Image.fromarray(np.round(cov * (alpha * 255)).astype(np.uint8), "L")
        self.output.paste_color(to_rgb255(color), (ox0, oy0), fill)
        if edge_color is not None:
            band = mask_boundary(crop, max(int(round(self._polygon_edge_width())), 1))
            self.output.paste_color(to_rgb255(edge_color), (ox0, oy0),
                                    Image.fromarray(band.astype(np.uint8) * 255, "L"))

    def _draw_text_in_mask(self, mask: np.ndarray, text: str, color: ColorSpec,
                           cc: tuple[int, np.ndarray, np.ndarray] | None) -> None:
        """``text`` at the median pixel of the mask's largest component and of every component larger than
        ``_LARGE_MASK_AREA_THRESH``."""
        num, labels, areas = cc if cc is not None else connected_components(mask)
        if num == 0:
            return
        largest = int(np.argmax(areas[1:])) + 1
        targets = {largest} | {int(c) for c in np.flatnonzero(areas > _LARGE_MASK_AREA_THRESH) if c > 0}
        for cid in sorted(targets):
            ys, xs = np.nonzero(labels == cid)
            self.draw_text(text, (float(np.median(xs)), float(np.median(ys))), color=color)

    def _jitter(self, color: ColorSpec) -> tuple[float, float, float]:
        """``color`` moved by a random RGB offset of length 0.5 (instances of one class stay distinguishable)."""
        vec = np.random.rand(3)
        vec = vec / np.linalg.norm(vec) * 0.5
        return tuple(np.clip(vec + np.asarray(to_rgb(color)), 0, 1).tolist())  # type: ignore[return-value]

    def _create_grayscale_image(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The input in grey, keeping the original colours where ``mask`` (H, W) bool is set."""
        grey = np.repeat(self.img.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
        if mask is not None:
            grey[mask] = self.img[mask]
        return grey

    def _change_color_brightness(self, color: ColorSpec, brightness_factor: float) -> tuple[float, float, float]:
        """``color`` with its HLS lightness scaled by ``1 + brightness_factor`` (factor in [-1, 1])."""
        return change_color_brightness(color, brightness_factor)

    def _convert_boxes(self, boxes: Any) -> np.ndarray:
        """Boxes / RotatedBoxes / tensor / array -> (N, 4 or 5) float array."""
        if hasattr(boxes, "tensor"):
            boxes = boxes.tensor
        arr = to_numpy(boxes).astype(np.float64)
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] not in (4, 5):
            raise ValueError(f"boxes must be (N, 4) XYXY or (N, 5) rotated, got shape {arr.shape}")
        return arr

    def _convert_masks(self, masks: Any) -> list[GenericMask | None]:
        h, w = self.output.height, self.output.width
        if hasattr(masks, "polygons"):  # PolygonMasks
            masks = masks.polygons
        elif hasattr(masks, "tensor"):  # BitMasks
            masks = masks.tensor
        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu().numpy()
        if isinstance(masks, np.ndarray) and masks.ndim != 3:
            raise ValueError(f"masks as an array must be (N, H, W), got shape {masks.shape}")
        return [None if m is None else GenericMask(m, h, w) for m in masks]

    def _convert_keypoints(self, keypoints: Any) -> np.ndarray:
        if hasattr(keypoints, "tensor"):
            keypoints = keypoints.tensor
        arr = to_numpy(keypoints).astype(np.float64)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"keypoints must be (N, K, 3) (x, y, score), got shape {arr.shape}")
        return arr

    def get_output(self) -> VisImage:
        """The :class:`VisImage` everything is drawn on."""
        return self.output


def _flat(pts: list[tuple[float, float]]) -> list[float]:
    return [c for p in pts for c in p]
