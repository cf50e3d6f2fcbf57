"""Draw predictions on the frames of a video with colours that stay with an object (detectron2's
``VideoVisualizer``).

    vv = VideoVisualizer(MetadataCatalog.get("coco_2017_val"))
    for frame_rgb in frames:                                          # (H, W, 3) uint8 RGB
        out = vv.draw_instance_predictions(frame_rgb, predictor(frame_bgr)["instances"].to("cpu"))
        writer.write(out.get_image()[:, :, ::-1])                     # VisImage -> RGB array

A plain :class:`~detlightning.utils.visualizer.Visualizer` picks random colours per call, so an object flickers from
frame to frame. This class remembers the instances it drew last and gives a new instance the colour of the previous
instance it overlaps most (same class, box IoU > 0.6, or mask IoU > 0.5 where there are masks but no boxes).
An instance that finds no successor is remembered for 8 more frames, so a detector that misses an object for a
frame or two does not change its colour. Unlike detectron2, a fresh colour is drawn from the palette entries no
remembered instance uses (while there are any), so a new object never looks like an object being tracked.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._raster import to_numpy
from .colormap import colormap
from .visualizer import ColorMode, VisImage, Visualizer, _create_text_labels, _meta_get

__all__ = ["VideoVisualizer"]

_TTL = 8  # frames an unmatched instance keeps its colour available
_BOX_IOU_THRESHOLD = 0.6
_MASK_IOU_THRESHOLD = 0.5

Color = tuple[float, float, float]


@dataclass
class _DetectedInstance:
    """What is remembered of one drawn instance: its class, its box (4,) XYXY or its mask (H, W) bool, its colour
    (RGB in [0, 1]) and how many more frames it may hand that colour on."""

    label: int | None
    bbox: np.ndarray | None
    mask: np.ndarray | None
    color: Color | None
    ttl: int = _TTL


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) x (N, 4) XYXY -> (M, N) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _mask_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """M and N (H, W) bool masks -> (M, N) IoU; masks of a different size than the new ones overlap nothing."""
    out = np.zeros((len(a), len(b)), dtype=np.float64)
    if not len(a) or not len(b):
        return out
    shape = b[0].shape
    keep = [i for i, m in enumerate(a) if m.shape == shape]
    if not keep:
        return out
    fa = np.stack([a[i].reshape(-1) for i in keep]).astype(np.float32)
    fb = np.stack([m.reshape(-1) for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    out[keep] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


class VideoVisualizer:
    """Draws per-frame predictions with colours kept stable across consecutive frames.

    Args:
        metadata: dataset metadata with ``.get(key, default)`` (``thing_classes``, ``stuff_classes``,
            ``stuff_colors``, ``duration_threshold``, ...), e.g. ``MetadataCatalog.get(name)``.
        instance_mode: ``ColorMode.IMAGE`` or ``ColorMode.IMAGE_BW`` (``SEGMENTATION`` colours by class, which
            would defeat the tracking).
    """

    def __init__(self, metadata: Any, instance_mode: ColorMode = ColorMode.IMAGE):
        if instance_mode not in (ColorMode.IMAGE, ColorMode.IMAGE_BW):
            raise ValueError(f"VideoVisualizer supports ColorMode.IMAGE and ColorMode.IMAGE_BW, got {instance_mode}")
        self.metadata = metadata
        self._instance_mode = instance_mode
        self._old_instances: list[_DetectedInstance] = []
        self._palette = colormap(rgb=True, maximum=1)

    def draw_instance_predictions(self, frame: Any, predictions: Any) -> VisImage:
        """Draw one frame's ``Instances`` (``pred_boxes``, ``pred_classes``, ``scores``, ``pred_masks`` (N, H, W),
        ``pred_keypoints`` (N, K, 3); a tracker's ``COLOR`` (N colours) and ``ID_duration`` (N frame counts; only
        instances seen longer than ``metadata.duration_threshold`` are drawn) are honoured).

        Args:
            frame: (H, W, 3) RGB image, values in [0, 255].
        Returns:
            the frame with the drawing, (H, W, 3).
        """
        vis = Visualizer(frame, self.metadata)
        num = len(predictions)
        if num == 0:
            return vis.output
        boxes = vis._convert_boxes(predictions.pred_boxes) if predictions.has("pred_boxes") else None
        scores = to_numpy(predictions.scores).tolist() if predictions.has("scores") else None
        classes = to_numpy(predictions.pred_classes).astype(int).tolist() if predictions.has("pred_classes") else None
        keypoints = predictions.pred_keypoints if predictions.has("pred_keypoints") else None
        masks = to_numpy(predictions.pred_masks).astype(bool) if predictions.has("pred_masks") else None

        if predictions.has("COLOR"):  # a tracker decided the colours already
            colors = [tuple(float(v) for v in c) for c in predictions.COLOR]
        else:
            detected = [
                _DetectedInstance(
                    label=None if classes is None else classes[i],
                    bbox=None if boxes is None else boxes[i],
                    # d2-parity: boxes decide the match whenever there are boxes; masks only without them
                    mask=masks[i] if boxes is None and masks is not None else None,
                    color=None,
                )
                for i in range(num)
            ]
            colors = self._assign_colors(detected)

        if predictions.has("ID_duration"):
            threshold = _meta_get(self.metadata, "duration_threshold", 0)
            visible = np.asarray([d > threshold for d in to_numpy(predictions.ID_duration).tolist()], dtype=bool)
        else:
            visible = np.ones(num, dtype=bool)
        keep = np.nonzero(visible)[0].tolist()

        if self._instance_mode == ColorMode.IMAGE_BW:
            fg = masks.any(axis=0) if masks is not None else None
            vis.output.reset_image(vis._create_grayscale_image(fg))
            alpha = 0.3
        else:
            alpha = 0.5
        labels = _create_text_labels(classes, scores, _meta_get(self.metadata, "thing_classes"))
        if keypoints is not None and hasattr(keypoints, "tensor"):
            keypoints = keypoints.tensor
        vis.overlay_instances(
            # d2-parity: with masks, boxes are left out (they clutter a video)
            boxes=boxes[keep] if boxes is not None and masks is None else None,
            masks=masks[keep] if masks is not None else None,
            labels=[labels[i] for i in keep] if labels is not None else None,
            keypoints=to_numpy(keypoints)[keep] if keypoints is not None else None,
            assigned_colors=[colors[i] for i in keep],
            alpha=alpha,
        )
        return vis.output

    def draw_sem_seg(self, frame: Any, sem_seg: Any, area_threshold: int | None = None) -> VisImage:
        """Draw an (H, W) integer label map on ``frame`` ((H, W, 3) RGB); class colours come from the metadata,
        so nothing needs tracking. Regions smaller than ``area_threshold`` pixels are left out."""
        vis = Visualizer(frame, self.metadata)
        vis.draw_sem_seg(sem_seg, area_threshold=area_threshold)
        return vis.output

    def draw_panoptic_seg(self, frame: Any, panoptic_seg: Any, segments_info: list[dict] | None,
                          area_threshold: int | None = None, alpha: float = 0.5) -> VisImage:
        """Draw a panoptic prediction on ``frame`` ((H, W, 3) RGB): ``panoptic_seg`` (H, W) segment ids,
        ``segments_info`` one dict per segment (``id``, ``category_id``, ``isthing``), or None to decode ids with
        ``metadata.label_divisor``. Stuff in its class colour, then things in colours tracked by mask IoU."""
        vis = Visualizer(frame, self.metadata)
        seg = to_numpy(panoptic_seg).astype(np.int64)
        if seg.ndim != 2:
            raise ValueError(f"draw_panoptic_seg expects an (H, W) id map, got shape {seg.shape}")
        ids, areas = np.unique(seg, return_counts=True)
        ids = ids[np.argsort(-areas, kind="stable")]
        sinfo = vis._panoptic_segments(ids, segments_info)
        if self._instance_mode == ColorMode.IMAGE_BW:
            vis.output.reset_image(vis._create_grayscale_image(np.isin(seg, list(sinfo))))

        stuff_names = _meta_get(self.metadata, "stuff_classes")
        stuff_colors = _meta_get(self.metadata, "stuff_colors")
        things: list[tuple[np.ndarray, int]] = []
        for sid in ids.tolist():
            info = sinfo.get(sid)
            if info is None:  # an id with no segment: nothing predicted there
                continue
            cat = int(info["category_id"])
            if info["isthing"]:
                things.append((seg == sid, cat))
                continue
            color = [x / 255 for x in stuff_colors[cat]] if stuff_colors and 0 <= cat < len(stuff_colors) else None
            text = stuff_names[cat] if stuff_names and 0 <= cat < len(stuff_names) else str(cat)
            vis.draw_binary_mask(seg == sid, color=color, text=text, alpha=alpha, area_threshold=area_threshold)
        if not things:
            return vis.output

        detected = [_DetectedInstance(label=cat, bbox=None, mask=m, color=None) for m, cat in things]
        colors = self._assign_colors(detected)
        thing_names = _meta_get(self.metadata, "thing_classes")
        labels = [thing_names[c] if thing_names and 0 <= c < len(thing_names) else str(c) for _, c in things]
        vis.overlay_instances(masks=np.stack([m for m, _ in things]), labels=labels, assigned_colors=colors,
                              alpha=alpha)
        return vis.output

    draw_panoptic_seg_predictions = draw_panoptic_seg  # detectron2's name for it

    def _assign_colors(self, instances: list[_DetectedInstance]) -> list[Color]:
        """Give every new instance the colour of the remembered instance that matches it, or a fresh one; then
        remember the new instances (and the unmatched old ones for ``ttl`` more frames). Returns N RGB colours."""
        old = self._old_instances
        if instances[0].bbox is not None:
            old_boxes = [o.bbox for o in old if o.bbox is not None]
            ious = np.zeros((len(old), len(instances)))
            if old_boxes and len(old_boxes) == len(old):
                ious = _box_iou(np.stack(old_boxes), np.stack([i.bbox for i in instances]))  # type: ignore[misc]
            threshold = _BOX_IOU_THRESHOLD
        else:
            if any(i.mask is None for i in instances):
                raise ValueError("VideoVisualizer: an instance has neither a box nor a mask to track it by")
            ious = np.zeros((len(old), len(instances)))
            if all(o.mask is not None for o in old):
                ious = _mask_iou([o.mask for o in old], [i.mask for i in instances])  # type: ignore[misc]
            threshold = _MASK_IOU_THRESHOLD
        same_label = np.asarray([[o.label == n.label for n in instances] for o in old], dtype=bool)
        ious = np.where(same_label.reshape(ious.shape), ious, 0.0)

        # each old instance hands its colour to its best match (first come, first served), like detectron2
        survivors = []
        for k, inst in enumerate(old):
            if len(instances) and ious[k].max() > threshold:
                best = int(ious[k].argmax())
                if instances[best].color is None:
                    instances[best].color = inst.color
                    continue
            inst.ttl -= 1
            if inst.ttl > 0:
                survivors.append(inst)

        in_use = [i.color for i in instances if i.color is not None] + [s.color for s in survivors]
        for inst in instances:
            if inst.color is None:
                inst.color = self._fresh_color(in_use)
                in_use.append(inst.color)
        self._old_instances = instances + survivors
        return [i.color for i in instances]  # type: ignore[misc]

    def _fresh_color(self, in_use: list[Color | None]) -> Color:
        """A random palette colour that no colour in ``in_use`` equals (any palette colour once all are used)."""
        used = {tuple(np.round(c, 6)) for c in in_use if c is not None}
        free = [c for c in self._palette if tuple(np.round(c, 6)) not in used]
        pool = free if free else list(self._palette)
        return tuple(float(v) for v in pool[np.random.randint(len(pool))])  # type: ignore[return-value]
