"""Box <-> delta parameterisations used by every detector head, and the dense (per-anchor) box regression loss."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ..layers import cat, ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from ..structures import Boxes

__all__ = ["Box2BoxTransform", "Box2BoxTransformRotated", "Box2BoxTransformLinear"]

# Clamp for predicted log-scale deltas: never grow a box by more than 1000/16 (a 16 px anchor to a 1000 px box),
# which keeps exp() finite for untrained heads.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_weights(weights: Sequence[float], n: int, owner: str) -> tuple[float, ...]:
    weights = tuple(float(w) for w in weights)
    if len(weights) != n:
        raise ValueError(f"{owner} needs {n} weights, got {len(weights)}: {weights}")
    return weights


class Box2BoxTransform:
    """The R-CNN box transform with deltas ``(dx, dy, dw, dh)``.

    ``dx, dy`` shift the box centre by a fraction of its width/height, ``dw, dh`` scale width/height by ``exp()``;
    each delta is multiplied by its entry of ``weights`` when encoding (divided when decoding).
    """

    def __init__(
        self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP
    ) -> None:
        """
        Args:
            weights: 4 scaling factors for (dx, dy, dw, dh), e.g. (10, 10, 5, 5) for Fast R-CNN heads.
            scale_clamp: upper bound applied to decoded dw/dh before ``exp()``.
        """
        self.weights = _check_weights(weights, 4, "Box2BoxTransform")
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that turn ``src_boxes`` into ``target_boxes``.

        Args:
            src_boxes: (N, 4) XYXY, e.g. anchors or proposals; must have positive width.
            target_boxes: (N, 4) XYXY, e.g. matched ground truth.
        Returns:
            (N, 4) deltas ``(dx, dy, dw, dh)`` in the dtype of the inputs.
        """
        if not isinstance(src_boxes, torch.Tensor) or not isinstance(target_boxes, torch.Tensor):
            raise TypeError(
                f"get_deltas expects two tensors, got {type(src_boxes).__name__} and {type(target_boxes).__name__}"
            )
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        src_cx = src_boxes[:, 0] + 0.5 * src_w
        src_cy = src_boxes[:, 1] + 0.5 * src_h

        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h

        wx, wy, ww, wh = self.weights
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        deltas = torch.stack((dx, dy, dw, dh), dim=1)
        if not bool((src_w > 0).all()):
            raise ValueError("Box2BoxTransform.get_deltas: source boxes must have positive width (x1 > x0)")
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode ``deltas`` relative to ``boxes``.

        Args:
            deltas: (N, k*4), k >= 1 (k class-specific transforms per box); any float dtype.
            boxes: (N, 4) XYXY.
        Returns:
            (N, k*4) float32 XYXY boxes.
        """
        # d2-parity: decode in fp32 even under autocast; half precision loses whole pixels on large images.
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        # (N, k*4) -> (N, k, 4): one row of k transforms per box; box sizes and centres broadcast as (N, 1)
        per_box = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)
        x0, y0, x1, y1 = (c[:, None] for c in boxes.unbind(dim=1))
        box_w, box_h = x1 - x0, y1 - y0
        centre_x, centre_y = x0 + 0.5 * box_w, y0 + 0.5 * box_h

        wx, wy, ww, wh = self.weights
        new_cx = per_box[..., 0] / wx * box_w + centre_x
        new_cy = per_box[..., 1] / wy * box_h + centre_y
        half_w = 0.5 * (torch.exp((per_box[..., 2] / ww).clamp(max=self.scale_clamp)) * box_w)
        half_h = 0.5 * (torch.exp((per_box[..., 3] / wh).clamp(max=self.scale_clamp)) * box_h)
        corners = (new_cx - half_w, new_cy - half_h, new_cx + half_w, new_cy + half_h)
        return torch.stack(corners, dim=-1).reshape(deltas.shape)


class Box2BoxTransformRotated:
    """The rotated-box transform with deltas ``(dx, dy, dw, dh, da)``; boxes are ``(cx, cy, w, h, angle_degrees)``
    and ``da`` is in radians."""

    def __init__(
        self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP
    ) -> None:
        self.weights = _check_weights(weights, 5, "Box2BoxTransformRotated")
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """(N, 5) deltas turning (N, 5) ``src_boxes`` into (N, 5) ``target_boxes``."""
        src_cx, src_cy, src_w, src_h, src_a = torch.unbind(src_boxes, dim=1)
        tgt_cx, tgt_cy, tgt_w, tgt_h, tgt_a = torch.unbind(target_boxes, dim=1)
        wx, wy, ww, wh, wa = self.weights
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        da = (tgt_a - src_a + 180.0) % 360.0 - 180.0  # wrap to [-180, 180)
        da = da * (wa * math.pi / 180.0)
        if not bool((src_w > 0).all()):
            raise ValueError("Box2BoxTransformRotated.get_deltas: source boxes must have positive width")
        return torch.stack((dx, dy, dw, dh, da), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode (N, k*5) ``deltas`` relative to (N, 5) ``boxes``; returns (N, k*5)."""
        if deltas.shape[1] % 5 != 0 or boxes.shape[1] != 5:
            raise ValueError(
                f"expected deltas (N, k*5) and boxes (N, 5), got {tuple(deltas.shape)} and {tuple(boxes.shape)}"
            )
        boxes = boxes.to(deltas.dtype).unsqueeze(2)
        ctr_x, ctr_y, widths, heights, angles = (boxes[:, i] for i in range(5))
        wx, wy, ww, wh, wa = self.weights
        dx = deltas[:, 0::5] / wx
        dy = deltas[:, 1::5] / wy
        dw = torch.clamp(deltas[:, 2::5] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::5] / wh, max=self.scale_clamp)
        da = deltas[:, 4::5] / wa

        angle = (da * 180.0 / math.pi + angles + 180.0) % 360.0 - 180.0
        pred = torch.stack(
            (dx * widths + ctr_x, dy * heights + ctr_y, torch.exp(dw) * widths, torch.exp(dh) * heights, angle),
            dim=-1,
        )
        return pred.reshape(deltas.shape)


class Box2BoxTransformLinear:
    """The FCOS transform: deltas are the distances ``(l, t, r, b)`` from the source box centre to the target's
    four edges, optionally divided by the source box size."""

    def __init__(self, normalize_by_size: bool = True) -> None:
        self.normalize_by_size = normalize_by_size

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) deltas from (N, 4) XYXY ``src_boxes`` (usually square anchors) to (N, 4) XYXY ``target_boxes``."""
        if not isinstance(src_boxes, torch.Tensor) or not isinstance(target_boxes, torch.Tensor):
            raise TypeError("get_deltas expects two tensors")
        src_cx = 0.5 * (src_boxes[:, 0] + src_boxes[:, 2])
        src_cy = 0.5 * (src_boxes[:, 1] + src_boxes[:, 3])
        deltas = torch.stack(
            (
                src_cx - target_boxes[:, 0],
                src_cy - target_boxes[:, 1],
                target_boxes[:, 2] - src_cx,
                target_boxes[:, 3] - src_cy,
            ),
            dim=1,
        )
        if self.normalize_by_size:
            deltas = deltas / self._strides(src_boxes)
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode (N, k*4) ``deltas`` relative to (N, 4) XYXY ``boxes``; returns (N, k*4) XYXY."""
        # Negative distances would give inverted boxes (Sec. 2.1 of arXiv:2006.09214).
        deltas = F.relu(deltas)
        boxes = boxes.to(deltas.dtype)
        ctr_x = 0.5 * (boxes[:, 0] + boxes[:, 2])
        ctr_y = 0.5 * (boxes[:, 1] + boxes[:, 3])
        if self.normalize_by_size:
            # d2-parity: (N, 4) strides multiply (N, k*4) deltas, so only k == 1 is meaningful here.
            deltas = deltas * self._strides(boxes)
        left, top, right, bottom = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
        pred = torch.stack(
            (ctr_x[:, None] - left, ctr_y[:, None] - top, ctr_x[:, None] + right, ctr_y[:, None] + bottom), dim=-1
        )
        return pred.reshape(deltas.shape)

    @staticmethod
    def _strides(boxes: torch.Tensor) -> torch.Tensor:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return torch.stack((w, h, w, h), dim=1)


def _dense_box_regression_loss(
    anchors: list[Boxes] | list[torch.Tensor],
    box2box_transform: Box2BoxTransform | Box2BoxTransformLinear,
    pred_anchor_deltas: list[torch.Tensor],
    gt_boxes: list[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Summed box regression loss over the foreground anchors of all images and levels.

    Args:
        anchors: per level, (Hi*Wi*A, 4) anchors as Boxes or tensors; R = sum over levels.
        box2box_transform: the transform that encodes/decodes deltas.
        pred_anchor_deltas: per level, (N, Hi*Wi*A, 4) predicted deltas.
        gt_boxes: per image, (R, 4) XYXY matched ground-truth box for each anchor.
        fg_mask: (N, R) bool, the anchors that contribute.
        box_reg_loss_type: "smooth_l1" (on deltas), or "giou" / "diou" / "ciou" (on decoded boxes).
        smooth_l1_beta: beta of the smooth L1 loss (0 = L1).
    Returns:
        scalar tensor (sum, not normalised).
    """
    if isinstance(anchors[0], Boxes):
        anchors_t = type(anchors[0]).cat(anchors).tensor  # (R, 4)
    else:
        anchors_t = cat(anchors)
    pred = cat(pred_anchor_deltas, dim=1)  # (N, R, 4)
    gt = torch.stack(gt_boxes)  # (N, R, 4)
    # Every image shares the anchors; flattening (N, R) into one batch is elementwise identical to a per-image loop.
    anchors_flat = anchors_t.expand(gt.shape).reshape(-1, 4)

    if box_reg_loss_type == "smooth_l1":
        gt_deltas = box2box_transform.get_deltas(anchors_flat, gt.reshape(-1, 4)).reshape(gt.shape)
        return smooth_l1_loss(pred[fg_mask], gt_deltas[fg_mask], beta=smooth_l1_beta, reduction="sum")

    losses = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
    if box_reg_loss_type not in losses:
        raise ValueError(
            f"Invalid dense box regression loss type {box_reg_loss_type!r}; expected 'smooth_l1', 'giou', 'diou' "
            f"or 'ciou'"
        )
    pred_boxes = box2box_transform.apply_deltas(pred.reshape(-1, 4), anchors_flat).reshape(gt.shape)
    return losses[box_reg_loss_type](pred_boxes[fg_mask], gt[fg_mask], reduction="sum")
