"""Region Proposal Network (Faster R-CNN): objectness and box deltas per anchor, their losses, and the proposals.

Shapes used below: N images, L feature levels, A anchors per location (same on every level), Hi x Wi the size of
level i, B the box dimension (4), R = sum_i Hi*Wi*A anchors of one image over all levels.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import Conv2d, ShapeSpec, cat
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage
from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss
from ..build import build_component
from ..matcher import Matcher
from ..registry import PROPOSAL_GENERATOR_REGISTRY, RPN_HEAD_REGISTRY
from ..sampling import subsample_labels
from .proposal_utils import find_top_rpn_proposals

__all__ = ["RPN", "RPN_HEAD_REGISTRY", "StandardRPNHead", "build_rpn_head"]

_LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc")


def build_rpn_head(cfg: Any, input_shape: list[ShapeSpec]) -> nn.Module:
    """The RPN head named by ``cfg.model.rpn.head_name`` (a registered name, or a node with ``_target_``)."""
    return build_component(RPN_HEAD_REGISTRY, "model.rpn.head_name", cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """The Faster R-CNN RPN head, shared by all levels: 3x3 conv(s) + ReLU, then two sibling 1x1 convs predicting
    per anchor an objectness logit and B box deltas."""

    @configurable
    def __init__(
        self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims: Sequence[int] = (-1,)
    ) -> None:
        """
        Args:
            in_channels: channels of every input level (they must all agree).
            num_anchors: anchors per spatial location.
            box_dim: deltas per anchor (4 for axis-aligned boxes, 5 for rotated ones).
            conv_dims: output channels of each hidden 3x3 conv; -1 keeps the input channel count.
        """
        super().__init__()
        conv_dims = [int(c) for c in conv_dims]
        if not conv_dims:
            raise ValueError("StandardRPNHead: conv_dims must name at least one hidden conv, e.g. [-1]")
        cur_channels = int(in_channels)
        if len(conv_dims) == 1:
            # d2-parity: a single hidden conv is the module `conv` itself (checkpoint key rpn_head.conv.weight).
            out_channels = cur_channels if conv_dims[0] == -1 else conv_dims[0]
            self._check_channels(out_channels)
            self.conv = self._get_rpn_conv(cur_channels, out_channels)
            cur_channels = out_channels
        else:
            self.conv = nn.Sequential()
            for k, conv_dim in enumerate(conv_dims):
                out_channels = cur_channels if conv_dim == -1 else conv_dim
                self._check_channels(out_channels)
                self.conv.add_module(f"conv{k}", self._get_rpn_conv(cur_channels, out_channels))
                cur_channels = out_channels
        self.objectness_logits = nn.Conv2d(cur_channels, num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(cur_channels, num_anchors * box_dim, kernel_size=1, stride=1)

        # d2-parity: same init, in module order, as detectron2 (so seeded initialisation matches too).
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @staticmethod
    def _check_channels(out_channels: int) -> None:
        if out_channels <= 0:
            raise ValueError(f"StandardRPNHead: conv output channels must be > 0 (or -1), got {out_channels}")

    @staticmethod
    def _get_rpn_conv(in_channels: int, out_channels: int) -> Conv2d:
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU())

    @classmethod
    def from_config(cls, cfg: Any, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(
                f"StandardRPNHead is shared across levels, so every input level must have the same channels; got "
                f"{[s.channels for s in input_shape]}"
            )
        # The head must predict as many anchors per location as the anchor generator makes; building one here
        # (cheap, no side effects) is the only way to know.
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = anchor_generator.num_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"StandardRPNHead needs the same number of anchors per location on every level, got {num_anchors}"
            )
        return {
            "in_channels": in_channels.pop(),
            "num_anchors": num_anchors[0],
            "box_dim": anchor_generator.box_dim,
            "conv_dims": list(cfg.model.rpn.conv_dims),
        }

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Args:
            features: L maps, each (N, C, Hi, Wi).
        Returns:
            objectness logits: L tensors (N, A, Hi, Wi);
            anchor deltas: L tensors (N, A*B, Hi, Wi).
        """
        hidden = [self.conv(x) for x in features]  # the same convs run on every level
        return [self.objectness_logits(h) for h in hidden], [self.anchor_deltas(h) for h in hidden]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Region Proposal Network: predicts objectness and box deltas for every anchor; in training labels and samples
    anchors against the ground truth for its two losses; always returns the top proposals of every image."""

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: float | Mapping[str, float] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ) -> None:
        """
        Args:
            in_features: names of the backbone features to run on, e.g. ["p2", ..., "p6"].
            head: maps L feature maps to (objectness logits, anchor deltas) per level (e.g. StandardRPNHead).
            anchor_generator: maps L feature maps to their anchors (list of Boxes).
            anchor_matcher: labels anchors against the ground truth (IoU bands).
            box2box_transform: encodes/decodes anchor deltas.
            batch_size_per_image: anchors sampled per image for the losses (also the loss normaliser).
            positive_fraction: upper bound on the positive share of the sample.
            pre_nms_topk: (train, test) proposals kept per level before NMS.
            post_nms_topk: (train, test) proposals kept per image after NMS.
            nms_thresh: IoU threshold of the proposal NMS.
            min_box_size: proposals with a side <= this (input pixels) are dropped.
            anchor_boundary_thresh: legacy; >= 0 ignores anchors that stick out of the image by more than this.
            loss_weight: one weight for both losses, or a dict {"loss_rpn_cls": w, "loss_rpn_loc": w}.
            box_reg_loss_type: "smooth_l1" or "giou" (also "diou", "ciou").
            smooth_l1_beta: beta of the smooth L1 loss (0 = L1); only for "smooth_l1".
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        # keyed by self.training
        self.pre_nms_topk = {True: int(pre_nms_topk[0]), False: int(pre_nms_topk[1])}
        self.post_nms_topk = {True: int(post_nms_topk[0]), False: int(post_nms_topk[1])}
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, numbers.Real):
            loss_weight = {name: float(loss_weight) for name in _LOSS_NAMES}
        elif isinstance(loss_weight, Mapping):
            unknown = set(loss_weight) - set(_LOSS_NAMES)
            if unknown:
                raise ValueError(f"RPN loss_weight has unknown keys {sorted(unknown)}; valid keys: {list(_LOSS_NAMES)}")
            loss_weight = {k: float(v) for k, v in loss_weight.items()}
        else:
            raise TypeError(f"RPN loss_weight must be a float or a dict, got {type(loss_weight).__name__}")
        self.loss_weight = loss_weight
        if box_reg_loss_type not in ("smooth_l1", "giou", "diou", "ciou"):
            raise ValueError(
                f"RPN box_reg_loss_type must be 'smooth_l1', 'giou', 'diou' or 'ciou', got {box_reg_loss_type!r}"
            )
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        rpn = cfg.model.rpn
        in_features = list(rpn.in_features)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise KeyError(
                f"model.rpn.in_features names {missing}, which the backbone does not output; backbone features: "
                f"{list(input_shape)} (the model's heads must fit the backbone: e.g. model=mask_rcnn_c4 with "
                f"backbone=resnet50_c4)"
            )
        shapes = [input_shape[f] for f in in_features]
        return {
            "in_features": in_features,
            "min_box_size": cfg.model.proposal_generator.min_size,
            "nms_thresh": rpn.nms_thresh,
            "batch_size_per_image": rpn.batch_size_per_image,
            "positive_fraction": rpn.positive_fraction,
            "loss_weight": {
                "loss_rpn_cls": rpn.loss_weight,
                "loss_rpn_loc": rpn.bbox_reg_loss_weight * rpn.loss_weight,
            },
            "anchor_boundary_thresh": rpn.boundary_thresh,
            "box2box_transform": Box2BoxTransform(weights=list(rpn.bbox_reg_weights)),
            "box_reg_loss_type": rpn.bbox_reg_loss_type,
            "smooth_l1_beta": rpn.smooth_l1_beta,
            "pre_nms_topk": (rpn.pre_nms_topk_train, rpn.pre_nms_topk_test),
            "post_nms_topk": (rpn.post_nms_topk_train, rpn.post_nms_topk_test),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(
                list(rpn.iou_thresholds), list(rpn.iou_labels), allow_low_quality_matches=True
            ),
            "head": build_rpn_head(cfg, shapes),
        }

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        """Keep a random sample of positives (1) and negatives (0) in ``label`` (R,); everything else becomes -1.
        Modifies ``label`` in place and returns it."""
        pos_idx, neg_idx = subsample_labels(label, self.batch_size_per_image, self.positive_fraction, 0)
        label.fill_(-1)
        label.scatter_(0, pos_idx, 1)
        label.scatter_(0, neg_idx, 0)
        return label

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Label every anchor of every image and sample the ones the losses use.

        Args:
            anchors: per level, the Hi*Wi*A anchors.
            gt_instances: per image, ``gt_boxes``.
        Returns:
            gt_labels: per image, (R,) int8 in {-1 ignore, 0 negative, 1 positive}.
            matched_gt_boxes: per image, (R, 4) the ground-truth box matched to each anchor (meaningful only where
                the label is 1).
        """
        anchors = Boxes.cat(anchors)
        for i, inst in enumerate(gt_instances):
            if not isinstance(inst, Instances) or not inst.has("gt_boxes"):
                fields = list(inst.get_fields()) if isinstance(inst, Instances) else type(inst).__name__
                raise ValueError(f"RPN: gt_instances[{i}] must be Instances with a 'gt_boxes' field, got {fields}")

        # Per image: IoU matrices are (M_i, R), and the sampling draws per image like detectron2 (seeded parity).
        per_image = [self._label_image(anchors, inst.gt_boxes, inst.image_size) for inst in gt_instances]
        return [labels for labels, _ in per_image], [boxes for _, boxes in per_image]

    def _label_image(
        self, anchors: Boxes, gt_boxes: Boxes, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R,) sampled labels in {-1, 0, 1} and (R, 4) matched ground-truth boxes of one image's R anchors."""
        matched_idxs, labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
        labels = labels.to(device=gt_boxes.device)
        if self.anchor_boundary_thresh >= 0:
            # legacy (off by default): ignore anchors that stick out of the image
            labels[~anchors.inside_box(image_size, self.anchor_boundary_thresh)] = -1
        labels = self._subsample_labels(labels)
        if len(gt_boxes) == 0:
            # all anchors are background: the regression targets are never read
            return labels, torch.zeros_like(anchors.tensor)
        return labels, gt_boxes[matched_idxs].tensor

    @torch.jit.unused
    def losses(
        self,
        anchors: list[Boxes],
        pred_objectness_logits: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        pred_anchor_deltas: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The RPN losses, both summed over the sampled anchors and divided by ``batch_size_per_image * N``.

        Args:
            anchors: per level, Hi*Wi*A anchors.
            pred_objectness_logits: per level, (N, Hi*Wi*A).
            gt_labels: output of :meth:`label_and_sample_anchors`.
            pred_anchor_deltas: per level, (N, Hi*Wi*A, B).
            gt_boxes: output of :meth:`label_and_sample_anchors`.
        Returns:
            {"loss_rpn_cls": objectness BCE, "loss_rpn_loc": box regression}, each times its loss weight.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        positive = labels == 1
        storage = get_event_storage()
        for kind, mask in (("pos", positive), ("neg", labels == 0)):
            storage.put_scalar(f"rpn/num_{kind}_anchors", mask.sum().item() / num_images)

        sampled = labels >= 0  # -1: not in the sample
        objectness_loss = F.binary_cross_entropy_with_logits(
            cat(pred_objectness_logits, dim=1)[sampled], labels[sampled].to(torch.float32), reduction="sum"
        )
        localization_loss = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            positive,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {
            "loss_rpn_cls": objectness_loss / normalizer,
            # d2-parity: the paper normalises the box loss by the number of anchor locations; detectron2 (and we)
            # use the sample size for both losses.
            "loss_rpn_loc": localization_loss / normalizer,
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """
        Args:
            images: the N input images (only their ``image_sizes`` are used).
            features: name -> (N, C, Hi, Wi) feature map; must hold every name of ``in_features``.
            gt_instances: per image, ground truth with ``gt_boxes``; required in training.
        Returns:
            proposals: per image, ``Instances`` with ``proposal_boxes`` and ``objectness_logits``, by decreasing
                objectness (at most post_nms_topk of them);
            losses: {"loss_rpn_cls", "loss_rpn_loc"} in training, {} in inference.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"RPN needs features {missing} (in_features={self.in_features}); got {list(features)}")
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)

        pred_objectness_logits, pred_anchor_deltas = self.rpn_head(feats)
        box_dim = self.anchor_generator.box_dim
        # Anchors are ordered (Hi, Wi, A) within a level; bring the predictions to that order.
        pred_objectness_logits = [
            score.permute(0, 2, 3, 1).flatten(1)  # (N, A, Hi, Wi) -> (N, Hi*Wi*A)
            for score in pred_objectness_logits
        ]
        pred_anchor_deltas = [
            # (N, A*B, Hi, Wi) -> (N, A, B, Hi, Wi) -> (N, Hi, Wi, A, B) -> (N, Hi*Wi*A, B)
            x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in pred_anchor_deltas
        ]

        if self.training:
            if gt_instances is None:
                raise ValueError(
                    "RPN requires gt_instances (per image Instances with gt_boxes) in training; call model.eval() "
                    "for inference"
                )
            if len(gt_instances) != len(images):
                raise ValueError(f"RPN got {len(gt_instances)} gt_instances for {len(images)} images")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        else:
            losses = {}
        proposals = self.predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, images.image_sizes)
        return proposals, losses

    def predict_proposals(
        self,
        anchors: list[Boxes],
        pred_objectness_logits: list[torch.Tensor],
        pred_anchor_deltas: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Instances]:
        """Decode the deltas and keep the top proposals per image (see :func:`find_top_rpn_proposals`).

        Proposals are treated as constants (no gradient flows into the boxes), as in approximate joint training.
        """
        mode = self.training
        with torch.no_grad():
            return find_top_rpn_proposals(
                self._decode_proposals(anchors, pred_anchor_deltas),
                pred_objectness_logits,
                image_sizes,
                nms_thresh=self.nms_thresh,
                pre_nms_topk=self.pre_nms_topk[mode],
                post_nms_topk=self.post_nms_topk[mode],
                min_box_size=self.min_box_size,
                training=mode,
            )

    def _decode_proposals(self, anchors: list[Boxes], pred_anchor_deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the per-level deltas (N, Hi*Wi*A, B) to the anchors; returns per level (N, Hi*Wi*A, B) boxes."""
        n = pred_anchor_deltas[0].shape[0]
        proposals = []
        for anchors_i, deltas_i in zip(anchors, pred_anchor_deltas):
            b = anchors_i.tensor.size(1)
            deltas_i = deltas_i.reshape(-1, b)
            # every image shares the anchors: one decode call over (N*Hi*Wi*A, B)
            anchors_i = anchors_i.tensor.unsqueeze(0).expand(n, -1, -1).reshape(-1, b)
            proposals.append(self.box2box_transform.apply_deltas(deltas_i, anchors_i).view(n, -1, b))
        return proposals
