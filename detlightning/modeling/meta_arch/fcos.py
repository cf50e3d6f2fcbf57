"""FCOS (Tian et al., "FCOS: A Simple and Strong Anchor-free Object Detector", arXiv:2006.09214).

An anchor-free dense detector: every feature-map location is a point that regresses its distances to the four edges
of an object, plus a centerness logit that down-weights off-centre points at test time.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import ShapeSpec, cat, sigmoid_focal_loss_jit
from ...structures import Boxes, ImageList, Instances, pairwise_point_box_distance
from ...utils.events import get_event_storage
from ..anchor_generator import DefaultAnchorGenerator
from ..backbone import Backbone
from ..box_regression import Box2BoxTransformLinear, _dense_box_regression_loss
from .dense_detector import DenseDetector
from .retinanet import RetinaNetHead

__all__ = ["FCOS", "FCOSHead"]

logger = logging.getLogger(__name__)


class FCOS(DenseDetector):
    """FCOS: one point per location on each ``head_in_features`` level; focal classification loss, GIoU box loss
    and a centerness BCE loss; test score ``sqrt(sigmoid(cls) * sigmoid(centerness))``.

    Not registered in ``META_ARCH_REGISTRY`` (as in detectron2): build it from a LazyConfig or by hand.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str] | None = None,
        box2box_transform: Box2BoxTransformLinear | None = None,
        num_classes: int,
        center_sampling_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        test_score_thresh: float = 0.2,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: multi-level feature extractor (e.g. ResNet-FPN with P6/P7 from P5).
            head: per level returns (N, K, Hi, Wi) logits, (N, 4, Hi, Wi) distances and (N, 1, Hi, Wi) centerness
                logits (:class:`FCOSHead`).
            head_in_features: backbone outputs the head reads; default all, by increasing stride.
            box2box_transform: point <-> box encoding; default ``Box2BoxTransformLinear(normalize_by_size=True)``
                (distances in units of the level's stride).
            num_classes: K foreground classes.
            center_sampling_radius: a point can be positive for a box only if it lies within this many strides of
                the box centre (in x and in y).
            focal_loss_alpha, focal_loss_gamma: focal loss parameters.
            test_score_thresh: candidates need a (centerness-weighted) score above this.
            test_topk_candidates: per level, at most this many candidates go to NMS.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept per image after NMS.
            pixel_mean, pixel_std: input normalisation.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = int(num_classes)

        # A location of stride s is encoded as an s x s square box centred on it, so that the generic dense
        # machinery (anchors as Boxes, size-normalised deltas) applies unchanged.
        shapes = backbone.output_shape()
        strides = [shapes[f].stride for f in self.head_in_features]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[s] for s in strides], aspect_ratios=[1.0], strides=strides
        )
        self.box2box_transform = (
            box2box_transform if box2box_transform is not None else Box2BoxTransformLinear(normalize_by_size=True)
        )
        self.center_sampling_radius = float(center_sampling_radius)

        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma

        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    # ------------------------------------------------------------------ training
    def forward_training(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        predictions: list[list[torch.Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, torch.Tensor]:
        pred_logits, pred_deltas, pred_ctrness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctrness)

    @torch.no_grad()
    def _match_anchors(self, gt_boxes: Boxes, anchors: list[Boxes]) -> torch.Tensor:
        """(M, R) match quality between M ground-truth boxes and the R points of all levels.

        A point may be assigned a box when it (1) lies within ``center_sampling_radius`` strides of the box centre,
        (2) lies strictly inside the box, and (3) its largest edge distance falls in its level's range
        (4s, 8s) for stride s (the first level has no lower bound, the last no upper bound). Eligible pairs score
        ``1e8 - area`` so the smallest eligible box wins; ineligible pairs score 0.
        """
        level_sizes = [len(a) for a in anchors]
        points = Boxes.cat(anchors)
        centers = points.get_centers()  # (R, 2)
        strides = points.tensor[:, 2] - points.tensor[:, 0]  # (R,)

        low = strides * 4
        low[: level_sizes[0]] = 0
        high = strides * 8
        high[-level_sizes[-1] :] = float("inf")

        # (1) centre sampling: Chebyshev distance to the gt centre below radius * stride
        offset = (centers[None, :, :] - gt_boxes.get_centers()[:, None, :]).abs_().amax(dim=2)  # (M, R)
        eligible = offset < self.center_sampling_radius * strides[None, :]

        edge_dist = pairwise_point_box_distance(centers, gt_boxes).permute(1, 0, 2)  # (M, R, 4): l, t, r, b
        # (2) inside the box
        eligible &= edge_dist.amin(dim=2) > 0
        # (3) scale range of the point's level
        reach = edge_dist.amax(dim=2)
        eligible &= (reach > low[None, :]) & (reach < high[None, :])

        quality = eligible.to(torch.float32)
        quality *= 1e8 - gt_boxes.area()[:, None]
        return quality

    @torch.no_grad()
    def label_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Assign every point of every image to at most one ground-truth box (FCOS rule; nothing is ignored).

        Returns:
            per image (R,) labels in {0..K-1 class, K background} and (R, 4) matched gt boxes (meaningful only for
            foreground points).
        """
        num_points = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            if len(inst) == 0:
                gt_labels.append(torch.full((num_points,), self.num_classes, dtype=torch.long, device=device))
                matched_gt_boxes.append(torch.zeros((num_points, 4), dtype=anchors[0].tensor.dtype, device=device))
                continue
            quality, matched = self._match_anchors(inst.gt_boxes, anchors).max(dim=0)
            background = quality < 1e-5
            matched = matched.masked_fill(background, 0)
            labels = inst.gt_classes[matched].masked_fill(background, self.num_classes)
            gt_labels.append(labels)
            matched_gt_boxes.append(inst.gt_boxes.tensor[matched])
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        pred_anchor_deltas: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        pred_centerness: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Focal, GIoU and centerness losses, each divided by the EMA of the foreground count.

        Args:
            anchors: per level (Hi*Wi, 4) point boxes; R = total points.
            pred_logits: per level (N, Hi*Wi, K); pred_anchor_deltas: (N, Hi*Wi, 4); pred_centerness: (N, Hi*Wi, 1).
            gt_labels: per image (R,) in {0..K-1, K (background)}; gt_boxes: per image (R, 4) matched gt boxes.
        Returns:
            ``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}`` scalars.
        """
        labels = torch.stack(gt_labels)  # (N, R)
        foreground = (labels >= 0) & (labels != self.num_classes)
        num_fg = foreground.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_fg / len(gt_labels))
        normalizer = self._ema_update("loss_normalizer", max(num_fg, 1), 300)

        # K + 1 one-hot columns minus the background one: background points have all-zero targets
        targets = F.one_hot(labels, num_classes=self.num_classes + 1)[..., :-1].to(pred_logits[0].dtype)
        loss_cls = sigmoid_focal_loss_jit(
            cat(pred_logits, dim=1), targets, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum"
        )
        loss_loc = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, foreground, box_reg_loss_type="giou"
        )
        ctrness_pred = cat(pred_centerness, dim=1).squeeze(dim=2)[foreground]
        ctrness_target = self.compute_ctrness_targets(anchors, gt_boxes)[foreground]
        loss_ctr = F.binary_cross_entropy_with_logits(ctrness_pred, ctrness_target, reduction="sum")
        return {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_loc / normalizer,
            "loss_fcos_ctr": loss_ctr / normalizer,
        }

    def compute_ctrness_targets(self, anchors: list[Boxes], gt_boxes: list[torch.Tensor]) -> torch.Tensor:
        """(N, R) centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of each point for its matched
        box; only meaningful where the point lies inside that box (foreground)."""
        points = Boxes.cat(anchors).tensor  # (R, 4)
        if len(gt_boxes) == 0:
            return points.new_zeros((0, len(points)))
        gt = torch.stack(gt_boxes)  # (N, R, 4)
        dist = self.box2box_transform.get_deltas(points.expand(gt.shape).reshape(-1, 4), gt.reshape(-1, 4))
        dist = dist.reshape(gt.shape)
        horizontal, vertical = dist[..., 0::2], dist[..., 1::2]  # (l, r), (t, b)
        ratio = (horizontal.amin(dim=-1) / horizontal.amax(dim=-1)) * (vertical.amin(dim=-1) / vertical.amax(dim=-1))
        return ratio.sqrt()

    # ----------------------------------------------------------------- inference
    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ) -> list[Instances]:
        pred_logits, pred_deltas, pred_ctrness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            # geometric mean of class probability and centerness (eq. 4 of arXiv:2006.09214)
            scores = [
                torch.sqrt(x[img_idx].sigmoid() * c[img_idx].sigmoid()) for x, c in zip(pred_logits, pred_ctrness)
            ]
            deltas = [x[img_idx] for x in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results



class FCOSHead(RetinaNetHead):
    """:class:`RetinaNetHead` with one prediction per location and a centerness conv on the box tower."""

    def __init__(self, *, input_shape: list[ShapeSpec], conv_dims: Sequence[int], **kwargs: Any) -> None:
        """
        Args:
            input_shape, conv_dims, and ``kwargs`` (num_classes, norm, prior_prob): as :class:`RetinaNetHead`;
                ``num_anchors`` is fixed to 1.
        """
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        # No learnable per-level scale (unlike the original FCOS): stride-normalised targets make it unnecessary.
        self.ctrness = nn.Conv2d(conv_dims[-1], 1, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.ctrness.weight, std=0.01)
        nn.init.constant_(self.ctrness.bias, 0)

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """
        Args:
            features: per level (N, C, Hi, Wi), highest resolution first.
        Returns:
            per level class logits (N, K, Hi, Wi), distances (N, 4, Hi, Wi), centerness logits (N, 1, Hi, Wi).
        """
        if len(features) != self._num_features:
            raise ValueError(f"FCOSHead was built for {self._num_features} levels, got {len(features)}")
        logits, bbox_reg, ctrness = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(box_feature))
            ctrness.append(self.ctrness(box_feature))
        return logits, bbox_reg, ctrness
