"""Panoptic FPN: Mask R-CNN plus a semantic segmentation branch, combined into a panoptic segmentation."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...structures import Instances
from ..postprocessing import detector_postprocess, sem_seg_postprocess
from ..registry import META_ARCH_REGISTRY
from .inputs import check_batched_inputs, collect_gt_instances, output_sizes, require_key, require_storage
from .rcnn import GeneralizedRCNN
from .semantic_seg import _padded_targets, build_sem_seg_head

__all__ = ["PanopticFPN", "combine_semantic_and_instance_outputs"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPN(GeneralizedRCNN):
    """Panoptic FPN (Kirillov et al.): a GeneralizedRCNN with a semantic head on the same FPN features.

    Inference outputs ``"instances"``, ``"sem_seg"`` and ``"panoptic_seg"`` per image.
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        combine_instances_score_thresh: float = 0.5,
        combine_overlap_thresh: float = 0.5,
        combine_stuff_area_thresh: float = 4096,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            sem_seg_head: semantic segmentation head (e.g. :class:`SemSegFPNHead`) whose class 0 stands for "thing".
            combine_instances_score_thresh: ignore instances scoring below this.
            combine_overlap_thresh: drop an instance whose mask is covered more than this by earlier instances.
            combine_stuff_area_thresh: drop stuff regions smaller than this many pixels.
            kwargs: :class:`GeneralizedRCNN` arguments.
        """
        super().__init__(**kwargs)
        if self.proposal_generator is None:
            raise ValueError("PanopticFPN needs a proposal generator (precomputed proposals are not supported)")
        self.sem_seg_head = sem_seg_head
        self.combine_overlap_thresh = combine_overlap_thresh
        self.combine_stuff_area_thresh = combine_stuff_area_thresh
        self.combine_instances_score_thresh = combine_instances_score_thresh

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg)
        combine = cfg.model.panoptic_fpn.combine
        ret.update(
            {
                "combine_overlap_thresh": combine.overlap_thresh,
                "combine_stuff_area_thresh": combine.stuff_area_limit,
                "combine_instances_score_thresh": combine.instances_confidence_thresh,
            }
        )
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        if not combine.enabled:
            logger.warning(
                "model.panoptic_fpn.combine.enabled is no longer used; call model.inference(do_postprocess=False) "
                "to get the raw outputs instead."
            )
        w = float(cfg.model.panoptic_fpn.instance_loss_weight)
        if w != 1.0:
            # d2-parity: detectron2 folds the instance weight into the box predictor's and mask head's loss weights.
            # The predictor's dict from the config holds only "loss_box_reg", so loss_cls (like the RPN losses)
            # stays unweighted.
            logger.warning("model.panoptic_fpn.instance_loss_weight should be replaced by weights on each ROI head.")
            roi_heads = ret["roi_heads"]
            lw = roi_heads.box_predictor.loss_weight
            roi_heads.box_predictor.loss_weight = {k: v * w for k, v in lw.items()} if isinstance(lw, dict) else lw * w
            if getattr(roi_heads, "mask_on", False):
                roi_heads.mask_head.loss_weight = roi_heads.mask_head.loss_weight * w
        return ret

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]] | dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: per image ``"image"``, optional ``"height"``/``"width"``, and in training
                ``"instances"`` and ``"sem_seg"`` ((H, W) int64 ids; stuff classes + 0 for "thing").
        Returns:
            training: the semantic, RPN and ROI-head losses in one dict; inference: see :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        check_batched_inputs(batched_inputs, "PanopticFPN")
        require_storage("PanopticFPN")
        require_key(batched_inputs, "sem_seg", "PanopticFPN", "training needs the semantic ground truth")
        gt_instances = collect_gt_instances(batched_inputs, ("gt_boxes", "gt_classes"), self.device, "PanopticFPN")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        gt_sem_seg = _padded_targets(batched_inputs, self.backbone, self.sem_seg_head.ignore_value, self.device)
        _, sem_seg_losses = self.sem_seg_head(features, gt_sem_seg)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)

        losses = dict(sem_seg_losses)
        losses.update(proposal_losses)
        losses.update(detector_losses)
        return losses

    def inference(  # type: ignore[override]
        self, batched_inputs: list[dict[str, Any]], do_postprocess: bool = True
    ) -> list[dict[str, Any]] | tuple[list[Instances], torch.Tensor]:
        """Run inference (eval mode).

        Returns:
            with ``do_postprocess``, per image ``{"sem_seg": (C, H, W) logits, "instances": Instances,
            "panoptic_seg": (panoptic_seg, segments_info)}`` at the output resolution (see
            :func:`combine_semantic_and_instance_outputs`); otherwise the raw ``(list[Instances], (N, C, Hp, Wp)
            sem_seg logits)`` at the padded input resolution.
        """
        if self.training:
            raise RuntimeError("PanopticFPN.inference() runs in eval mode; call model.eval() first")
        check_batched_inputs(batched_inputs, "PanopticFPN")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)

        if not do_postprocess:
            return detector_results, sem_seg_results

        sizes = output_sizes(batched_inputs, images.image_sizes)
        outputs = []
        for logits, raw_instances, input_size, (height, width) in zip(
            sem_seg_results, detector_results, images.image_sizes, sizes
        ):
            sem_seg = sem_seg_postprocess(logits, input_size, height, width)
            instances = detector_postprocess(raw_instances, height, width)
            outputs.append(
                {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": self._panoptic(instances, sem_seg)}
            )
        return outputs

    def _panoptic(self, instances: Instances, sem_seg: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Panoptic segmentation of one image from its rescaled instances and (C, H, W) semantic logits."""
        return combine_semantic_and_instance_outputs(
            instances,
            sem_seg.argmax(dim=0),
            overlap_threshold=self.combine_overlap_thresh,
            stuff_area_thresh=self.combine_stuff_area_thresh,
            instances_score_thresh=self.combine_instances_score_thresh,
        )


def combine_semantic_and_instance_outputs(
    instance_results: Instances,
    semantic_results: torch.Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Merge instance and semantic predictions into one panoptic segmentation (panopticapi's heuristic).

    Instances, by decreasing score and while their score >= ``instances_score_thresh``, claim their still-free mask
    pixels unless more than ``overlap_threshold`` of the mask is already taken (empty masks are skipped). Then each
    semantic class other than 0 (the "thing" class of the semantic head), in increasing class order, takes its free
    pixels if they number at least ``stuff_area_thresh``.

    Args:
        instance_results: ``scores``, ``pred_classes`` and ``pred_masks`` ((N, H, W) bool/0-1) at the output size.
        semantic_results: (H, W) integer semantic class per pixel.
    Returns:
        panoptic_seg: (H, W) int32, 0 = void, k = the segment with ``id`` k.
        segments_info: per segment ``{"id", "isthing": True, "score", "category_id", "instance_id"}`` (thing;
            ``instance_id`` indexes ``instance_results``) or ``{"id", "isthing": False, "category_id", "area"}``
            (stuff), ids 1, 2, ... in creation order.
    """
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    segments_info: list[dict[str, Any]] = []
    current_segment_id = 0

    if len(instance_results) > 0:
        if not instance_results.has("pred_masks"):
            raise ValueError("combine_semantic_and_instance_outputs: instance_results need 'pred_masks'")
        scores = instance_results.scores
        sorted_inds = torch.argsort(-scores)
        instance_masks = instance_results.pred_masks.to(dtype=torch.bool, device=panoptic_seg.device)
        if instance_masks.shape[-2:] != panoptic_seg.shape:
            raise ValueError(
                f"instance masks {tuple(instance_masks.shape[-2:])} and semantic map {tuple(panoptic_seg.shape)} "
                f"must have the same size"
            )
        mask_areas = instance_masks.flatten(1).sum(1).tolist()
        scores_l = scores.tolist()
        classes_l = instance_results.pred_classes.tolist()
        # Greedy: each instance's admission depends on the pixels taken by the ones before it.
        for inst_id in sorted_inds.tolist():
            score = scores_l[inst_id]
            if score < instances_score_thresh:
                break
            mask_area = mask_areas[inst_id]
            if mask_area == 0:
                continue
            mask = instance_masks[inst_id]
            taken = panoptic_seg > 0
            intersect_area = int((mask & taken).sum())
            if intersect_area * 1.0 / mask_area > overlap_threshold:
                continue
            if intersect_area > 0:
                mask = mask & ~taken
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append(
                {
                    "id": current_segment_id,
                    "isthing": True,
                    "score": score,
                    "category_id": classes_l[inst_id],
                    "instance_id": inst_id,
                }
            )

    # Stuff: one pass over all classes (the free pixels of different classes are disjoint).
    free = panoptic_seg == 0
    labels = torch.unique(semantic_results)
    labels = labels[labels != 0]  # 0 is the semantic head's "thing" class
    if labels.numel() > 0:
        free_labels = semantic_results[free].long()
        areas = torch.bincount(free_labels, minlength=int(labels.max()) + 1)[labels.long()]
        keep = areas >= stuff_area_thresh
        kept_labels, kept_areas = labels[keep].long(), areas[keep]
        ids = torch.arange(1, kept_labels.numel() + 1, dtype=torch.int32) + current_segment_id
        lut = torch.zeros(int(labels.max()) + 1, dtype=torch.int32, device=panoptic_seg.device)
        lut[kept_labels] = ids.to(panoptic_seg.device)
        panoptic_seg[free] = lut[free_labels]
        for seg_id, label, area in zip(ids.tolist(), kept_labels.tolist(), kept_areas.tolist()):
            segments_info.append({"id": seg_id, "isthing": False, "category_id": label, "area": area})
    return panoptic_seg, segments_info
