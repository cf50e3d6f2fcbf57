"""Cascade R-CNN ROI heads: a sequence of box heads, each refining the previous stage's boxes at a higher IoU."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import Function

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import ShapeSpec, nchw_for_pooling
from ...structures import Boxes, Instances, pairwise_iou
from ...utils.events import get_event_storage
from ..box_regression import Box2BoxTransform
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..registry import ROI_HEADS_REGISTRY
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .roi_heads import StandardROIHeads, _check_features

__all__ = ["CascadeROIHeads"]


class _ScaleGradient(Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return input

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """Cascade R-CNN (Cai & Vasconcelos): ``len(box_heads)`` box stages; stage k > 0 takes the boxes of stage k-1
    as proposals and labels them with its own (higher) IoU threshold. Inference averages the class scores of all
    stages and uses the last stage's boxes. Mask / keypoint branches are those of :class:`StandardROIHeads`."""

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        proposal_matchers: Sequence[Matcher],
        **kwargs: Any,
    ) -> None:
        """
        Args:
            box_in_features, box_pooler: as in :class:`StandardROIHeads` (one pooler shared by the stages).
            box_heads: one box head per stage.
            box_predictors: one :class:`FastRCNNOutputLayers` per stage (class-agnostic regression, each with its
                stage's box2box weights).
            proposal_matchers: one matcher per stage; the first matches the RPN proposals.
            kwargs: the other :class:`StandardROIHeads` arguments (without ``proposal_matcher``).
        """
        if "proposal_matcher" in kwargs:
            raise TypeError("CascadeROIHeads takes 'proposal_matchers' (one per stage), not 'proposal_matcher'")
        num_stages = len(box_heads)
        if num_stages == 0 or len(box_predictors) != num_stages or len(proposal_matchers) != num_stages:
            raise ValueError(
                f"CascadeROIHeads needs one box head, predictor and matcher per stage; got {len(box_heads)} heads, "
                f"{len(box_predictors)} predictors, {len(proposal_matchers)} matchers"
            )
        # the first stage's matching (RPN proposals vs ground truth) is the base class's label_and_sample_proposals
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            **kwargs,
        )
        self.num_cascade_stages = num_stages
        self.proposal_matchers = list(proposal_matchers)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg, input_shape)
        ret.pop("proposal_matcher")
        return ret

    @classmethod
    def _init_box_head(cls, cfg: Any, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        in_features = list(cfg.model.roi_heads.in_features)
        _check_features(in_features, input_shape, "CascadeROIHeads")
        head_cfg = cfg.model.roi_box_head
        cascade_bbox_reg_weights = [tuple(w) for w in cfg.model.roi_box_cascade_head.bbox_reg_weights]
        cascade_ious = list(cfg.model.roi_box_cascade_head.ious)
        if len(cascade_bbox_reg_weights) != len(cascade_ious):
            raise ValueError(
                f"model.roi_box_cascade_head: {len(cascade_bbox_reg_weights)} bbox_reg_weights for "
                f"{len(cascade_ious)} ious; one of each per stage is expected"
            )
        if not head_cfg.cls_agnostic_bbox_reg:
            raise ValueError("CascadeROIHeads only supports class-agnostic regression: set "
                             "model.roi_box_head.cls_agnostic_bbox_reg=true")
        if cascade_ious[0] != cfg.model.roi_heads.iou_thresholds[0]:
            raise ValueError(
                f"model.roi_box_cascade_head.ious[0] ({cascade_ious[0]}) must equal "
                f"model.roi_heads.iou_thresholds[0] ({cfg.model.roi_heads.iou_thresholds[0]})"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"CascadeROIHeads: in_features {in_features} must have equal channels")
        (in_channels,) = channels
        resolution = head_cfg.pooler_resolution
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=head_cfg.pooler_sampling_ratio,
            pooler_type=head_cfg.pooler_type,
        )
        pooled_shape = ShapeSpec(channels=in_channels, width=resolution, height=resolution)

        box_heads, box_predictors, proposal_matchers = [], [], []
        for match_iou, bbox_reg_weights in zip(cascade_ious, cascade_bbox_reg_weights):
            box_head = build_box_head(cfg, pooled_shape)
            box_heads.append(box_head)
            box_predictors.append(
                FastRCNNOutputLayers(
                    cfg, box_head.output_shape, box2box_transform=Box2BoxTransform(weights=bbox_reg_weights)
                )
            )
            proposal_matchers.append(Matcher([match_iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": proposal_matchers,
        }

    def forward(
        self,
        images: Any,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """See :meth:`StandardROIHeads.forward`; training losses are per stage (``loss_cls_stage0``, ...)."""
        del images
        proposals = self._training_proposals(proposals, targets)
        features = nchw_for_pooling(features, self._pooled_features())
        if not self.training:
            return self.forward_with_given_boxes(features, self._forward_box(features, proposals)), {}

        # the later stages relabel their boxes, so unlike StandardROIHeads the targets are still needed here
        losses = self._forward_box(features, proposals, targets)
        # the mask / keypoint heads train on the first stage's sampled proposals
        for branch in (self._forward_mask, self._forward_keypoint):
            losses.update(branch(features, proposals))
        return proposals, losses

    def _forward_box(  # type: ignore[override]
        self,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ):
        """Run the stages. Training: ``{<loss>_stage<k>}``; inference: per image the detected Instances."""
        image_sizes = [x.image_size for x in proposals]
        feature_list = [features[f] for f in self.box_in_features]
        stages: list[tuple[nn.Module, Any, list[Instances]]] = []  # (predictor, predictions, proposals) per stage
        for stage in range(self.num_cascade_stages):
            if stages:  # this stage starts from the boxes the previous one predicted
                prev_predictor, prev_predictions, prev_proposals = stages[-1]
                refined = prev_predictor.predict_boxes(prev_predictions, prev_proposals)
                proposals = self._create_proposals_from_boxes(refined, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, stage, targets)
            stages.append((self.box_predictor[stage], self._run_stage(feature_list, proposals, stage), proposals))

        if self.training:
            losses = {}
            storage = get_event_storage()
            for stage, (predictor, predictions, stage_proposals) in enumerate(stages):
                with storage.name_scope(f"stage{stage}"):
                    stage_losses = predictor.losses(predictions, stage_proposals)
                losses.update({f"{name}_stage{stage}": v for name, v in stage_losses.items()})
            return losses

        # per image (Ri, K + 1): the stages' probabilities averaged
        probs_per_stage = [predictor.predict_probs(out, props) for predictor, out, props in stages]
        mean_probs = [sum(list(per_image)) * (1.0 / self.num_cascade_stages) for per_image in zip(*probs_per_stage)]
        last, last_out, last_proposals = stages[-1]
        detections, _ = fast_rcnn_inference(
            last.predict_boxes(last_out, last_proposals),
            mean_probs,
            image_sizes,
            last.test_score_thresh,
            last.test_nms_thresh,
            last.test_topk_per_image,
        )
        return detections

    @torch.no_grad()
    def _match_and_label_boxes(
        self, proposals: list[Instances], stage: int, targets: list[Instances]
    ) -> list[Instances]:
        """Label the stage's proposals with ``gt_classes`` (K = background) and ``gt_boxes`` using the stage's
        matcher (no sampling: every box of the previous stage is used)."""
        num_fg_samples, num_bg_samples = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            match_quality_matrix = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, proposal_labels = self.proposal_matchers[stage](match_quality_matrix)
            if len(targets_per_image) > 0:
                gt_classes = targets_per_image.gt_classes[matched_idxs]
                gt_classes[proposal_labels == 0] = self.num_classes
                gt_boxes = targets_per_image.gt_boxes[matched_idxs]
            else:
                gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = Boxes(targets_per_image.gt_boxes.tensor.new_zeros((len(proposals_per_image), 4)))
            proposals_per_image.gt_classes = gt_classes
            proposals_per_image.gt_boxes = gt_boxes
            num_fg_samples.append((proposal_labels == 1).sum().item())
            num_bg_samples.append(proposal_labels.numel() - num_fg_samples[-1])

        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg_samples) / len(num_fg_samples))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg_samples) / len(num_bg_samples))
        return proposals

    def _run_stage(self, features: list[torch.Tensor], proposals: list[Instances], stage: int):
        """Pool, run stage ``stage``'s box head and predictor: ``(scores (R, K+1), deltas (R, 4))``."""
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        if self.training:
            # The original averages the stage losses but scales up the heads' gradients; summing the losses and
            # scaling down the gradient reaching the shared features is equivalent.
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _create_proposals_from_boxes(
        self, boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Instances]:
        """Per image (Ri, 4) boxes -> Instances with clipped, detached ``proposal_boxes``; empty boxes are
        dropped in training only (at inference the stages' scores must stay row-aligned)."""
        proposals = []
        for boxes_per_image, image_size in zip(boxes, image_sizes):
            b = Boxes(boxes_per_image.detach())
            b.clip(image_size)
            if self.training:
                b = b[b.nonempty()]
            prop = Instances(image_size)
            prop.proposal_boxes = b
            proposals.append(prop)
        return proposals
