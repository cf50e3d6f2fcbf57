"""RetinaNet: a dense one-stage detector with focal loss (detectron2's ``META_ARCH`` "RetinaNet")."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import CycleBatchNormList, ShapeSpec, cat, get_norm, sigmoid_focal_loss_jit
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage
from ..anchor_generator import build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss
from ..matcher import Matcher
from ..registry import META_ARCH_REGISTRY
from .dense_detector import DenseDetector, permute_to_N_HWA_K  # noqa: F401  (permute_to_N_HWA_K: d2 import path)

__all__ = ["RetinaNet", "RetinaNetHead"]

logger = logging.getLogger(__name__)

_BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection"): anchors on P3-P7, a shared conv head,
    sigmoid focal loss for classification and smooth-L1 / GIoU box regression."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: str = "BGR",
    ) -> None:
        """
        Args:
            backbone: e.g. ``build_retinanet_resnet_fpn_backbone`` (P3-P7).
            head: predicts per level (N, A*K, Hi, Wi) logits and (N, A*4, Hi, Wi) deltas (:class:`RetinaNetHead`).
            head_in_features: backbone outputs used by the head and the anchor generator.
            anchor_generator: anchors per level for ``head_in_features``.
            box2box_transform: anchor <-> box delta encoding.
            anchor_matcher: labels anchors foreground / background / ignore by IoU with the ground truth.
            num_classes: K foreground classes (background is implicit: all sigmoids low).
            focal_loss_alpha, focal_loss_gamma: focal loss parameters.
            smooth_l1_beta: beta of the smooth-L1 box loss (0 = L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            test_score_thresh: candidates need a score above this.
            test_topk_candidates: per level, at most this many candidates go to NMS.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept per image after NMS.
            pixel_mean, pixel_std: input normalisation.
            vis_period: unused (kept for detectron2's signature); input_format: channel order of the inputs.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if len(self.backbone.output_shape()) != len(self.head_in_features):
            logger.warning("[RetinaNet] Backbone produces unused features.")
        if box_reg_loss_type not in _BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"RetinaNet: box_reg_loss_type must be one of {_BOX_REG_LOSS_TYPES}, got {box_reg_loss_type!r}"
            )
        self.num_classes = int(num_classes)
        self.input_format = input_format
        self.vis_period = vis_period

        # training: anchors, their labelling, and the two losses
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.focal_loss_gamma = focal_loss_gamma
        self.focal_loss_alpha = focal_loss_alpha

        # inference: candidate selection and NMS
        self.max_detections_per_image = max_detections_per_image
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_score_thresh = test_score_thresh

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        node = cfg.model.retinanet
        in_features = list(node.in_features)
        missing = [f for f in in_features if f not in backbone_shape]
        if missing:
            raise KeyError(
                f"model.retinanet.in_features {missing} are not backbone outputs; those are {sorted(backbone_shape)}"
            )
        feature_shapes = [backbone_shape[f] for f in in_features]
        return {
            "backbone": backbone,
            "head": RetinaNetHead(cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=tuple(node.bbox_reg_weights)),
            "anchor_matcher": Matcher(
                list(node.iou_thresholds), list(node.iou_labels), allow_low_quality_matches=True
            ),
            "pixel_mean": list(cfg.model.pixel_mean),
            "pixel_std": list(cfg.model.pixel_std),
            "num_classes": node.num_classes,
            "head_in_features": in_features,
            "focal_loss_alpha": node.focal_loss_alpha,
            "focal_loss_gamma": node.focal_loss_gamma,
            "smooth_l1_beta": node.smooth_l1_loss_beta,
            "box_reg_loss_type": node.bbox_reg_loss_type,
            "test_score_thresh": node.score_thresh_test,
            "test_topk_candidates": node.topk_candidates_test,
            "test_nms_thresh": node.nms_thresh_test,
            "max_detections_per_image": cfg.test.detections_per_image,
            "vis_period": int(cfg.vis_period),
            "input_format": cfg.input.format,
        }

    def forward_training(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        predictions: list[list[torch.Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, torch.Tensor]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        pred_anchor_deltas: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Focal classification loss and box regression loss, both divided by the EMA of the foreground count.

        Args:
            anchors: per level (Hi*Wi*A, 4) Boxes; R = total anchors.
            pred_logits: per level (N, Hi*Wi*A, K); pred_anchor_deltas: per level (N, Hi*Wi*A, 4).
            gt_labels: per image (R,) int64 in {-1 (ignore), 0..K-1, K (background)}.
            gt_boxes: per image (R, 4) matched ground-truth boxes.
        Returns:
            ``{"loss_cls", "loss_box_reg"}`` scalars.
        """
        labels = torch.stack(gt_labels)  # (N, R)
        labelled = labels >= 0  # ignored anchors (-1) take part in neither loss
        foreground = labelled & (labels != self.num_classes)
        num_fg = foreground.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_fg / len(gt_labels))
        normalizer = self._ema_update("loss_normalizer", max(num_fg, 1), 100)

        logits = cat(pred_logits, dim=1)[labelled]
        # one-hot over K + 1 columns minus the last: a background anchor's target is all zeros
        targets = F.one_hot(labels[labelled], num_classes=self.num_classes + 1)[:, :-1].to(pred_logits[0].dtype)
        cls_loss = sigmoid_focal_loss_jit(
            logits, targets, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum"
        )
        box_loss = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            foreground,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": cls_loss / normalizer, "loss_box_reg": box_loss / normalizer}

    @torch.no_grad()
    def label_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Match all anchors of every image to its ground truth.

        Returns:
            per image (R,) labels in {-1 ignore, 0..K-1 class, K background} and (R, 4) matched gt boxes
            (meaningful only for foreground anchors).
        """
        anchors_all = Boxes.cat(anchors)  # (R, 4)
        gt_labels = []
        matched_gt_boxes = []
        for gt_per_image in gt_instances:
            match_quality_matrix = pairwise_iou(gt_per_image.gt_boxes, anchors_all)
            matched_idxs, anchor_labels = self.anchor_matcher(match_quality_matrix)
            del match_quality_matrix
            if len(gt_per_image) > 0:
                matched_gt_boxes_i = gt_per_image.gt_boxes.tensor[matched_idxs]
                gt_labels_i = gt_per_image.gt_classes[matched_idxs]
                gt_labels_i[anchor_labels == 0] = self.num_classes
                gt_labels_i[anchor_labels == -1] = -1
            else:
                matched_gt_boxes_i = torch.zeros_like(anchors_all.tensor)
                gt_labels_i = torch.zeros_like(matched_idxs) + self.num_classes
            gt_labels.append(gt_labels_i)
            matched_gt_boxes.append(matched_gt_boxes_i)
        return gt_labels, matched_gt_boxes

    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ) -> list[Instances]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [x[img_idx].sigmoid() for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size))
        return results



class RetinaNetHead(nn.Module):
    """RetinaNet's head: two conv towers (classification, box regression) shared across levels."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: Sequence[int],
        norm: str | Callable[[int], nn.Module] = "",
        prior_prob: float = 0.01,
    ) -> None:
        """
        Args:
            input_shape: one ShapeSpec per level (all the same channel count).
            num_classes: K; num_anchors: A anchors per location.
            conv_dims: output channels of each tower conv.
            norm: norm after each tower conv ("" none, "GN", ...); "BN" / "SyncBN" use one BN per level
                (:class:`CycleBatchNormList`).
            prior_prob: initial foreground probability of the classifier (sets the cls_score bias).
        """
        super().__init__()
        if not input_shape:
            raise ValueError("RetinaNetHead: input_shape must list at least one feature level")
        self._num_features = len(input_shape)
        if norm in ("BN", "SyncBN"):
            logger.info("Using domain-specific %s in RetinaNetHead with len=%d.", norm, self._num_features)
            bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm

            def norm(c: int) -> nn.Module:
                return CycleBatchNormList(length=self._num_features, bn_class=bn_class, num_features=c)

        elif norm and "BN" in str(type(get_norm(norm, 32))):
            logger.warning("Shared BatchNorm (norm=%s) may not work well in RetinaNetHead.", norm)

        cls_subnet: list[nn.Module] = []
        bbox_subnet: list[nn.Module] = []
        for in_channels, out_channels in zip([input_shape[0].channels, *conv_dims], conv_dims):
            for subnet in (cls_subnet, bbox_subnet):
                subnet.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1))
                if norm:
                    subnet.append(get_norm(norm, out_channels))
                subnet.append(nn.ReLU())
        self.cls_subnet = nn.Sequential(*cls_subnet)
        self.bbox_subnet = nn.Sequential(*bbox_subnet)
        self.cls_score = nn.Conv2d(conv_dims[-1], num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], num_anchors * 4, kernel_size=3, stride=1, padding=1)

        for modules in (self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred):
            for layer in modules.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, mean=0, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        # start with every anchor predicting foreground with probability prior_prob: keeps the focal loss of the
        # huge number of background anchors from swamping the first iterations
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg: Any, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(f"RetinaNetHead needs the same number of anchors on every level, got {num_anchors}")
        node = cfg.model.retinanet
        return {
            "input_shape": input_shape,
            "num_classes": node.num_classes,
            "conv_dims": [input_shape[0].channels] * node.num_convs,
            "prior_prob": node.prior_prob,
            "norm": node.norm,
            "num_anchors": num_anchors[0],
        }

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Args:
            features: per level (N, C, Hi, Wi), highest resolution first.
        Returns:
            per level logits (N, A*K, Hi, Wi) and box deltas (N, A*4, Hi, Wi).
        """
        if len(features) != self._num_features:
            raise ValueError(f"RetinaNetHead was built for {self._num_features} levels, got {len(features)}")
        logits = []
        bbox_reg = []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_reg.append(self.bbox_pred(self.bbox_subnet(feature)))
        return logits, bbox_reg
