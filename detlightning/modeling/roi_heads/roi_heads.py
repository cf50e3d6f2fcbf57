"""ROI heads: match and sample proposals (training), pool per-region features and run the box/mask/keypoint heads.

:class:`StandardROIHeads` (FPN and C5 models) gives each task its own pooler and head; :class:`Res5ROIHeads` (C4
models) shares one pooler and a per-ROI res5 stage between the box predictor and the mask head.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np
import torch
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import ShapeSpec, nchw_for_pooling, nonzero_tuple
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage
from ..backbone.resnet import BottleneckBlock, ResNet
from ..build import build_component
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..proposal_generator.proposal_utils import add_ground_truth_to_proposals
from ..registry import ROI_HEADS_REGISTRY
from ..sampling import subsample_labels
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers
from .keypoint_head import build_keypoint_head
from .mask_head import build_mask_head

__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "StandardROIHeads",
    "build_roi_heads",
    "select_foreground_proposals",
    "select_proposals_with_visible_keypoints",
]

logger = logging.getLogger(__name__)


def build_roi_heads(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The ROI heads selected by ``cfg.model.roi_heads`` (``name`` in ROI_HEADS_REGISTRY or ``_target_``)."""
    return build_component(ROI_HEADS_REGISTRY, "model.roi_heads", cfg, input_shape)


def select_foreground_proposals(
    proposals: list[Instances], bg_label: int
) -> tuple[list[Instances], list[torch.Tensor]]:
    """Keep the proposals whose ``gt_classes`` is neither ignored (-1) nor background (``bg_label``).

    Returns per image the kept proposals and the (Ri,) bool selection mask.
    """
    if not isinstance(proposals, (list, tuple)) or not proposals or not isinstance(proposals[0], Instances):
        raise TypeError("select_foreground_proposals expects a non-empty list of Instances")
    if not proposals[0].has("gt_classes"):
        raise ValueError("select_foreground_proposals: proposals need a 'gt_classes' field")
    keep_masks = [(p.gt_classes != -1) & (p.gt_classes != bg_label) for p in proposals]
    kept = [p[nonzero_tuple(m)[0]] for p, m in zip(proposals, keep_masks)]
    return kept, keep_masks


def _visible_keypoint_in_box(boxes: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """boxes (N, 4) XYXY, keypoints (N, K, 3) as (x, y, visibility) -> (N,) bool: some keypoint with v >= 1 lies
    inside its row's box (borders included)."""
    x, y, v = keypoints.unbind(dim=2)
    x0, y0, x1, y1 = (c[:, None] for c in boxes.unbind(dim=1))
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return (inside & (v >= 1)).any(dim=1)


def select_proposals_with_visible_keypoints(proposals: list[Instances]) -> list[Instances]:
    """Keep the proposals with at least one visible (v >= 1) ground-truth keypoint inside the proposal box.

    proposals: per image, foreground proposals with ``proposal_boxes`` and ``gt_keypoints`` (Keypoints, (N, K, 3)).
    Images without proposals pass through unchanged. Puts ``keypoint_head/num_fg_samples`` into the storage.

    Unlike Detectron (which re-samples among IoU-positive proposals with a visible keypoint), proposals are
    sampled first and filtered afterwards, as detectron2 does.
    """
    filtered: list[Instances] = []
    kept_counts: list[int] = []  # only images that had proposals count towards the mean
    for inst in proposals:
        if len(inst) > 0:
            hit = _visible_keypoint_in_box(inst.proposal_boxes.tensor, inst.gt_keypoints.tensor)
            inst = inst[nonzero_tuple(hit)[0]]
            kept_counts.append(len(inst))
        filtered.append(inst)
    get_event_storage().put_scalar("keypoint_head/num_fg_samples", np.mean(kept_counts))
    return filtered


class ROIHeads(nn.Module):
    """Base of the ROI heads: proposal/ground-truth matching and fg/bg sampling for training.

    Subclasses implement ``forward(images, features, proposals, targets=None) -> (instances, losses)``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ) -> None:
        """
        Args:
            num_classes: number of foreground classes K (background is label K).
            batch_size_per_image: proposals sampled per image for training.
            positive_fraction: at most this fraction of the sample is foreground.
            proposal_matcher: assigns each proposal to a ground-truth box (or background / ignore).
            proposal_append_gt: add the ground-truth boxes to the proposals before matching.
        """
        super().__init__()
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_classes = num_classes
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt

    @classmethod
    def from_config(cls, cfg) -> dict:
        cfg = cfg_view(cfg)
        roi = cfg.model.roi_heads
        return {
            "batch_size_per_image": roi.batch_size_per_image,
            "positive_fraction": roi.positive_fraction,
            "num_classes": roi.num_classes,
            "proposal_append_gt": roi.proposal_append_gt,
            "proposal_matcher": Matcher(
                list(roi.iou_thresholds), list(roi.iou_labels), allow_low_quality_matches=False
            ),
        }

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample proposals and give them classification labels.

        Args:
            matched_idxs: (N,) index in [0, M) of each proposal's best ground truth.
            matched_labels: (N,) the matcher's label (0 background, -1 ignore, 1 foreground).
            gt_classes: (M,) ground-truth classes.

        Returns:
            (S,) indices of the sampled proposals (foreground first) and their (S,) labels in [0, K]
            (K = background).
        """
        if gt_classes.numel() == 0:  # no ground truth: every proposal is background
            labels = torch.full_like(matched_idxs, self.num_classes)
        else:
            labels = gt_classes[matched_idxs]
            labels.masked_fill_(matched_labels == 0, self.num_classes)
            labels.masked_fill_(matched_labels == -1, -1)
        fg_idxs, bg_idxs = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, self.num_classes)
        keep = torch.cat((fg_idxs, bg_idxs))
        return keep, labels[keep]

    def _sample_image(self, proposals: Instances, targets: Instances) -> Instances:
        """Match one image's proposals to its ground truth and return the sampled ones with their ``gt_*`` fields
        (see :meth:`label_and_sample_proposals`)."""
        iou = pairwise_iou(targets.gt_boxes, proposals.proposal_boxes)  # (M, N)
        matched_idxs, matched_labels = self.proposal_matcher(iou)
        keep, labels = self._sample_proposals(matched_idxs, matched_labels, targets.gt_classes)
        sampled = proposals[keep]
        sampled.gt_classes = labels
        if len(targets) > 0:
            gt_rows = matched_idxs[keep]
            # every gt_* field not set yet; the mask/keypoint heads filter to foreground again later
            carried = {
                name: value[gt_rows]
                for name, value in targets.get_fields().items()
                if name.startswith("gt_") and not sampled.has(name)
            }
            for name, value in carried.items():
                sampled.set(name, value)
        return sampled

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: list[Instances], targets: list[Instances]) -> list[Instances]:
        """Match proposals to ground truth and sample ``batch_size_per_image`` of them per image.

        Args:
            proposals: per image, ``proposal_boxes`` (+ ``objectness_logits``).
            targets: per image, ``gt_boxes``, ``gt_classes`` and optionally ``gt_masks``, ``gt_keypoints``...

        Returns:
            per image the sampled proposals with ``gt_classes`` (K for background) and, when the image has
            ground truth, every ``gt_*`` field of its targets indexed by the matched ground truth (for background
            proposals that box is meaningless). Images without ground truth get no ``gt_*`` field besides
            ``gt_classes``. Puts ``roi_head/num_fg_samples`` and ``num_bg_samples`` into the event storage.
        """
        # With random RPN weights early in training, few proposals overlap the ground truth; adding the ground-truth
        # boxes guarantees the second stage some positives from the first iteration.
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals([x.gt_boxes for x in targets], proposals)

        sampled = [self._sample_image(p, t) for p, t in zip(proposals, targets)]
        bg_counts = [int((p.gt_classes == self.num_classes).sum()) for p in sampled]
        fg_counts = [len(p) - n_bg for p, n_bg in zip(sampled, bg_counts)]
        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", np.mean(fg_counts))
        storage.put_scalar("roi_head/num_bg_samples", np.mean(bg_counts))
        return sampled

    def _training_proposals(
        self, proposals: list[Instances], targets: list[Instances] | None
    ) -> list[Instances]:
        """The forward preamble of every ROI head: in training, ``proposals`` labelled and sampled against
        ``targets`` (required); in inference, ``proposals`` as given."""
        if not self.training:
            return proposals
        if not targets:
            raise ValueError(f"{type(self).__name__}: 'targets' is required in training")
        return self.label_and_sample_proposals(proposals, targets)

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """
        Args:
            images: the batch (unused by the standard heads).
            features: feature maps by name, each (N, C, Hi, Wi).
            proposals: per image, ``proposal_boxes`` and ``objectness_logits``.
            targets: per image ground truth (``gt_boxes``, ``gt_classes``, optional ``gt_masks``,
                ``gt_keypoints``); training only.

        Returns:
            per image the detected instances (inference; may be empty or the sampled proposals in training),
            and the dict of losses (training; empty in inference).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """C4 ROI heads (ResNet paper, appendix A): pool on res4, run the res5 stage per ROI, and share that feature
    between the box predictor (after global average pooling) and the mask head."""

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: nn.Module,
        mask_head: nn.Module | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            in_features: the single feature map to pool from (e.g. ["res4"]).
            pooler: extracts per-ROI features from it.
            res5: per-ROI network (a list of blocks is wrapped in ``nn.Sequential``).
            box_predictor: :class:`FastRCNNOutputLayers`-like predictor on the pooled res5 output.
            mask_head: optional mask head on the res5 output.
            kwargs: :class:`ROIHeads` arguments.
        """
        super().__init__(**kwargs)
        self.in_features = list(in_features)
        self.mask_on = mask_head is not None
        # registration order (pooler, res5, box_predictor, mask_head) fixes the order of the state_dict keys
        self.pooler = pooler
        self.res5 = nn.Sequential(*res5) if isinstance(res5, (list, tuple)) else res5
        self.box_predictor = box_predictor
        if mask_head is not None:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg)
        in_features = ret["in_features"] = list(cfg.model.roi_heads.in_features)
        box_head = cfg.model.roi_box_head
        pooler_resolution = box_head.pooler_resolution
        if cfg.model.keypoint_on:
            raise ValueError("Res5ROIHeads has no keypoint head; use StandardROIHeads when model.keypoint_on is true")
        if len(in_features) != 1:
            raise ValueError(f"Res5ROIHeads pools from exactly one feature map, got in_features={in_features}")
        _check_features(in_features, input_shape, "Res5ROIHeads")

        ret["pooler"] = ROIPooler(
            output_size=pooler_resolution,
            scales=(1.0 / input_shape[in_features[0]].stride,),
            sampling_ratio=box_head.pooler_sampling_ratio,
            pooler_type=box_head.pooler_type,
        )
        if not inspect.ismethod(cls._build_res5_block):
            # a subclass overrode it as a plain method (old detectron2 style): bind it to the class
            logger.warning("_build_res5_block should be a classmethod; its behaviour may change")
            cls._build_res5_block = classmethod(cls._build_res5_block)
        ret["res5"], out_channels = cls._build_res5_block(cfg)
        ret["box_predictor"] = FastRCNNOutputLayers(cfg, ShapeSpec(channels=out_channels, height=1, width=1))
        if cfg.model.mask_on:
            ret["mask_head"] = build_mask_head(
                cfg, ShapeSpec(channels=out_channels, width=pooler_resolution, height=pooler_resolution)
            )
        return ret

    @classmethod
    def _build_res5_block(cls, cfg) -> tuple[nn.Sequential, int]:
        """The res5 stage (3 bottleneck blocks, first with stride 2) from ``cfg.model.resnets``; returns it and its
        output channels."""
        resnets = cfg.model.resnets
        stage_channel_factor = 2**3  # res5 has 8x the channels of res2
        num_groups = resnets.num_groups
        bottleneck_channels = num_groups * resnets.width_per_group * stage_channel_factor
        out_channels = resnets.res2_out_channels * stage_channel_factor
        if resnets.deform_on_per_stage[-1]:
            raise ValueError(
                "Res5ROIHeads: deformable convolutions are not supported in the res5 head; "
                "model.resnets.deform_on_per_stage[-1] (MODEL.RESNETS.DEFORM_ON_PER_STAGE) must be false"
            )
        blocks = ResNet.make_stage(
            BottleneckBlock,
            3,
            stride_per_block=[2, 1, 1],
            in_channels=out_channels // 2,
            bottleneck_channels=bottleneck_channels,
            out_channels=out_channels,
            num_groups=num_groups,
            norm=resnets.norm,
            stride_in_1x1=resnets.stride_in_1x1,
        )
        return nn.Sequential(*blocks), out_channels

    def _shared_roi_transform(self, features: list[torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
        """Pool ``boxes`` from ``features`` and run res5: (R, C_out, S/2, S/2)."""
        return self.res5(self.pooler(features, boxes))

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """See :meth:`ROIHeads.forward`. Training returns ``([], losses)``."""
        del images
        proposals = self._training_proposals(proposals, targets)
        del targets

        roi_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(roi_features.mean(dim=[2, 3]))
        if not self.training:
            detections, _ = self.box_predictor.inference(predictions, proposals)
            return self.forward_with_given_boxes(features, detections), {}

        del features
        losses = self.box_predictor.losses(predictions, proposals)
        if self.mask_on:
            fg_proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
            # the res5 features are shared: the mask head reuses the foreground rows instead of pooling again
            fg_features = roi_features[torch.cat(fg_masks, dim=0)]
            del roi_features
            losses.update(self.mask_head(fg_features, fg_proposals))
        return [], losses

    def forward_with_given_boxes(
        self, features: dict[str, torch.Tensor], instances: list[Instances]
    ) -> list[Instances]:
        """Add ``pred_masks`` (when mask_on) to ``instances`` (with ``pred_boxes``, ``pred_classes``); inference
        only."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call model.eval() first")
        if not (instances[0].has("pred_boxes") and instances[0].has("pred_classes")):
            raise ValueError("forward_with_given_boxes: instances need 'pred_boxes' and 'pred_classes'")
        if self.mask_on:
            feature_list = [features[f] for f in self.in_features]
            x = self._shared_roi_transform(feature_list, [x.pred_boxes for x in instances])
            return self.mask_head(x, instances)
        return instances


def _check_features(in_features: list[str], input_shape: dict[str, ShapeSpec], who: str) -> None:
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise KeyError(f"{who}: in_features {missing} not among the backbone outputs {sorted(input_shape)}")


def _make_pooler(cfg_head, in_features: list[str], input_shape: dict[str, ShapeSpec]) -> ROIPooler | None:
    """A pooler from a head's config node (pooler_resolution / _sampling_ratio / _type); None for an empty type."""
    if not cfg_head.pooler_type:
        return None
    return ROIPooler(
        output_size=cfg_head.pooler_resolution,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=cfg_head.pooler_sampling_ratio,
        pooler_type=cfg_head.pooler_type,
    )


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """ROI heads where each task (box, mask, keypoint) has its own pooler and head; used by FPN and C5 models.

    Subclass it and override a ``_forward_*`` or an ``_init_*_head`` classmethod to change one branch.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_in_features: list[str] | None = None,
        mask_pooler: ROIPooler | None = None,
        mask_head: nn.Module | None = None,
        keypoint_in_features: list[str] | None = None,
        keypoint_pooler: ROIPooler | None = None,
        keypoint_head: nn.Module | None = None,
        train_on_pred_boxes: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            box_in_features: feature maps the box pooler reads.
            box_pooler: per-ROI feature extraction for the box head.
            box_head: per-ROI feature transform (e.g. :class:`FastRCNNConvFCHead`).
            box_predictor: :class:`FastRCNNOutputLayers`-like predictor on the box head's output.
            mask_in_features: feature maps of the mask branch; None disables it.
            mask_pooler: per-ROI features for the mask head; None hands the head the feature dict instead.
            mask_head: the mask head.
            keypoint_in_features, keypoint_pooler, keypoint_head: the same for the keypoint branch.
            train_on_pred_boxes: train the mask/keypoint heads on the box head's refined boxes instead of the
                proposals.
            kwargs: :class:`ROIHeads` arguments.
        """
        super().__init__(**kwargs)
        # in_features: the older name, kept for code that reads it
        self.in_features = self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor

        self.mask_on = mask_in_features is not None
        if self.mask_on:
            self.mask_in_features = list(mask_in_features)
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head

        self.keypoint_on = keypoint_in_features is not None
        if self.keypoint_on:
            self.keypoint_in_features = list(keypoint_in_features)
            self.keypoint_pooler = keypoint_pooler
            self.keypoint_head = keypoint_head

        self.train_on_pred_boxes = train_on_pred_boxes

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg)
        ret["train_on_pred_boxes"] = cfg.model.roi_box_head.train_on_pred_boxes
        # A subclass may override _init_*_head as a plain method (old style); those are not bound classmethods and
        # the subclass calls them itself.
        branch_inits = (cls._init_box_head, cls._init_mask_head, cls._init_keypoint_head)
        for init_branch in branch_inits:
            if inspect.ismethod(init_branch):
                ret.update(init_branch(cfg, input_shape))
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        in_features = list(cfg.model.roi_heads.in_features)
        _check_features(in_features, input_shape, "StandardROIHeads")
        head_cfg = cfg.model.roi_box_head
        pooler_resolution = head_cfg.pooler_resolution
        # one box head serves all levels, so all levels must have the same channel count
        in_channels = {input_shape[f].channels for f in in_features}
        if len(in_channels) != 1:
            raise ValueError(
                f"StandardROIHeads: in_features {in_features} must have equal channels, got "
                f"{[input_shape[f].channels for f in in_features]}"
            )
        (channels,) = in_channels
        box_pooler = ROIPooler(
            output_size=pooler_resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=head_cfg.pooler_sampling_ratio,
            pooler_type=head_cfg.pooler_type,
        )
        box_head = build_box_head(
            cfg, ShapeSpec(channels=channels, height=pooler_resolution, width=pooler_resolution)
        )
        box_predictor = FastRCNNOutputLayers(cfg, box_head.output_shape)
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": box_predictor,
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        if not cfg.model.mask_on:
            return {}
        return _init_pooled_head(cfg.model.roi_mask_head, "mask", build_mask_head, cfg, input_shape)

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        if not cfg.model.keypoint_on:
            return {}
        return _init_pooled_head(cfg.model.roi_keypoint_head, "keypoint", build_keypoint_head, cfg, input_shape)

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """See :meth:`ROIHeads.forward`. Training returns the sampled proposals and the losses."""
        del images
        proposals = self._training_proposals(proposals, targets)
        del targets
        features = nchw_for_pooling(features, self._pooled_features())
        if not self.training:
            # masks and keypoints are computed for the final detections only
            return self.forward_with_given_boxes(features, self._forward_box(features, proposals)), {}

        losses = self._forward_box(features, proposals)
        # with train_on_pred_boxes, _forward_box has replaced proposal_boxes by the predicted boxes
        for branch in (self._forward_mask, self._forward_keypoint):
            losses.update(branch(features, proposals))
        return proposals, losses

    def forward_with_given_boxes(
        self, features: dict[str, torch.Tensor], instances: list[Instances]
    ) -> list[Instances]:
        """Run the mask / keypoint branches on known boxes (``pred_boxes``, ``pred_classes``); inference only.

        Returns the same Instances objects with ``pred_masks`` / ``pred_keypoints`` added.
        """
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call model.eval() first")
        if not (instances[0].has("pred_boxes") and instances[0].has("pred_classes")):
            raise ValueError("forward_with_given_boxes: instances need 'pred_boxes' and 'pred_classes'")
        instances = self._forward_mask(features, instances)
        instances = self._forward_keypoint(features, instances)
        return instances

    def _pooled_features(self) -> list[str]:
        """The feature maps this head's ROI poolers read."""
        names = list(self.box_in_features)
        if self.mask_on and self.mask_pooler is not None:
            names += self.mask_in_features
        if self.keypoint_on and self.keypoint_pooler is not None:
            names += self.keypoint_in_features
        return names

    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):
        """Box branch. Training: the box losses (and, with ``train_on_pred_boxes``, ``proposal_boxes`` replaced by
        the predicted boxes of the gt class); inference: per image the detected Instances."""
        feature_list = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(feature_list, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            # the losses read proposal_boxes, so they must be computed before proposals are modified
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                    for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                        proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return pred_instances

    def _forward_mask(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        """Mask branch on foreground proposals (training: ``{"loss_mask"}``) or on ``pred_boxes`` (inference:
        ``instances`` with ``pred_masks``)."""
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        return self.mask_head(self._pool(features, instances, self.mask_in_features, self.mask_pooler), instances)

    def _forward_keypoint(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        """Keypoint branch on foreground proposals with a visible keypoint (training: ``{"loss_keypoint"}``) or on
        ``pred_boxes`` (inference: ``instances`` with ``pred_keypoints``, ``pred_keypoint_heatmaps``)."""
        if not self.keypoint_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = select_proposals_with_visible_keypoints(instances)
        return self.keypoint_head(
            self._pool(features, instances, self.keypoint_in_features, self.keypoint_pooler), instances
        )

    def _pool(
        self,
        features: dict[str, torch.Tensor],
        instances: list[Instances],
        in_features: list[str],
        pooler: ROIPooler | None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Pooled ROI features for proposals (training) / predicted boxes (inference); without a pooler, the dict
        of the branch's feature maps for the head to crop itself."""
        if pooler is None:
            return {f: features[f] for f in in_features}
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        return pooler([features[f] for f in in_features], boxes)


def _init_pooled_head(cfg_head, branch: str, build_head, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
    """Config -> ``{branch}_in_features``, ``{branch}_pooler`` and ``{branch}_head`` for the mask / keypoint
    branches (an empty ``pooler_type`` means no pooler: the head gets the feature maps and their shapes)."""
    in_features = list(cfg.model.roi_heads.in_features)
    _check_features(in_features, input_shape, "StandardROIHeads")
    pooler = _make_pooler(cfg_head, in_features, input_shape)
    if pooler is not None:
        resolution = cfg_head.pooler_resolution
        shape: ShapeSpec | dict[str, ShapeSpec] = ShapeSpec(
            channels=input_shape[in_features[0]].channels, width=resolution, height=resolution
        )
    else:
        shape = {f: input_shape[f] for f in in_features}
    return {
        f"{branch}_in_features": in_features,
        f"{branch}_pooler": pooler,
        f"{branch}_head": build_head(cfg, shape),
    }
