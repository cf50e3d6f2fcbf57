"""DenseDetector: base of fully-convolutional detectors that predict at every feature-map location (RetinaNet).

Inputs and outputs follow detectron2's ``list[dict]`` model API (see :mod:`.rcnn`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...layers import batched_nms
from ...structures import Boxes, ImageList, Instances
from ..backbone import Backbone
from ..postprocessing import detector_postprocess
from .inputs import (
    check_batched_inputs,
    collect_gt_instances,
    normalize_images,
    output_sizes,
    register_pixel_stats,
    require_storage,
)

__all__ = ["DenseDetector", "permute_to_N_HWA_K"]

logger = logging.getLogger(__name__)


def permute_to_N_HWA_K(tensor: torch.Tensor, K: int) -> torch.Tensor:  # noqa: N802, N803  (detectron2's name)
    """(N, A*K, H, W) -> (N, H*W*A, K): per-location predictions, location-major then anchor."""
    if tensor.dim() != 4:
        raise ValueError(f"permute_to_N_HWA_K expects an (N, A*K, H, W) tensor, got shape {tuple(tensor.shape)}")
    N, _, H, W = tensor.shape
    tensor = tensor.view(N, -1, K, H, W)
    tensor = tensor.permute(0, 3, 4, 1, 2)
    return tensor.reshape(N, -1, K)


class DenseDetector(nn.Module):
    """Base of dense detectors: backbone -> head on ``head_in_features`` -> per-location predictions.

    Subclasses implement :meth:`forward_training` and :meth:`forward_inference`.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str] | None = None,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: feature extractor (``output_shape()``, ``size_divisibility``, ``padding_constraints``).
            head: module taking the list of ``head_in_features`` maps and returning a list of per-level outputs.
            head_in_features: backbone outputs the head reads; default all of them, by increasing stride.
            pixel_mean, pixel_std: per input channel, used as ``(image - mean) / std``.
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        shapes = self.backbone.output_shape()
        if head_in_features is None:
            self.head_in_features = sorted(shapes.keys(), key=lambda x: shapes[x].stride)
        else:
            missing = [f for f in head_in_features if f not in shapes]
            if missing:
                raise KeyError(f"head_in_features {missing} are not backbone outputs; those are {sorted(shapes)}")
            self.head_in_features = list(head_in_features)
        register_pixel_stats(self, pixel_mean, pixel_std, type(self).__name__)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]] | dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: per image ``"image"`` ((C, H, W), unnormalised), optional ``"height"``/``"width"``
                (output size), and in training ``"instances"`` (``gt_boxes``, ``gt_classes``).
        Returns:
            training: dict of scalar losses (needs an EventStorage); inference: per image
            ``{"instances": Instances}`` with ``pred_boxes``, ``scores``, ``pred_classes`` at the output size.
        """
        owner = type(self).__name__
        check_batched_inputs(batched_inputs, owner)
        if self.training:
            require_storage(owner)
            gt_instances = collect_gt_instances(batched_inputs, ("gt_boxes", "gt_classes"), self.device, owner)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features_list = [features[f] for f in self.head_in_features]
        predictions = self.head(features_list)

        if self.training:
            return self.forward_training(images, features_list, predictions, gt_instances)

        results = self.forward_inference(images, features_list, predictions)
        sizes = output_sizes(batched_inputs, images.image_sizes)
        return [{"instances": detector_postprocess(r, h, w)} for r, (h, w) in zip(results, sizes)]

    def forward_training(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        predictions: list[list[torch.Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_training()")

    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ) -> list[Instances]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_inference()")

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise, pad (``backbone.size_divisibility`` / ``padding_constraints``) and batch the images."""
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std, type(self).__name__)
        return ImageList.from_tensors(
            images, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    def _transpose_dense_predictions(
        self, predictions: list[list[torch.Tensor]], dims_per_anchor: list[int]
    ) -> list[list[torch.Tensor]]:
        """Each output's per-level (N, Ai*K, Hi, Wi) maps -> (N, Hi*Wi*Ai, K), K from ``dims_per_anchor``."""
        if len(predictions) != len(dims_per_anchor):
            raise ValueError(f"got {len(predictions)} prediction outputs but {len(dims_per_anchor)} dims_per_anchor")
        return [[permute_to_N_HWA_K(x, k) for x in pred] for pred, k in zip(predictions, dims_per_anchor)]

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9) -> float:
        """``self.<name> = momentum * old + (1 - momentum) * value`` (old defaults to ``initial_value``).

        Used for the loss normaliser: with 1-2 images per GPU the foreground count varies a lot, and dividing by
        a running average keeps the loss scale steady.
        """
        old = getattr(self, name, initial_value)
        new = old * momentum + value * (1 - momentum)
        setattr(self, name, new)
        return new

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: torch.Tensor,
        pred_deltas: torch.Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        """One level: keep scores > ``score_thresh``, then the ``topk_candidates`` best, and decode their boxes.

        Args:
            anchors: (R, 4) anchors of the level; pred_scores: (R, K) probabilities; pred_deltas: (R, 4).
        Returns:
            Instances with ``pred_boxes`` (Boxes), ``scores`` (float), ``pred_classes`` (int64).
        """
        keep_idxs = pred_scores > score_thresh
        pred_scores = pred_scores[keep_idxs]
        topk_idxs = torch.nonzero(keep_idxs)  # (M, 2): anchor index, class index (row-major = flattened order)
        num_candidates = topk_idxs.size(0)
        if isinstance(num_candidates, torch.Tensor):  # a traced size: Python's min() would freeze the branch taken
            num_topk = torch.clamp(num_candidates, max=topk_candidates)
        else:
            num_topk = min(topk_candidates, num_candidates)
        pred_scores, idxs = pred_scores.topk(num_topk)
        topk_idxs = topk_idxs[idxs]
        anchor_idxs, classes_idxs = topk_idxs.unbind(dim=1)
        pred_boxes = self.box2box_transform.apply_deltas(pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs])
        return Instances(image_size, pred_boxes=Boxes(pred_boxes), scores=pred_scores, pred_classes=classes_idxs)

    def inference_single_image(
        self,
        anchors: list[Boxes],
        box_cls: list[torch.Tensor],
        box_delta: list[torch.Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """Detections of one image (RetinaNet, FCOS): per-level score threshold + top-k, decoding, then per-class NMS
        over all levels, with the subclass's ``test_score_thresh``, ``test_topk_candidates``, ``test_nms_thresh`` and
        ``max_detections_per_image``.

        Args:
            anchors: per level (Hi*Wi*A, 4); box_cls: per level (Hi*Wi*A, K) scores; box_delta: (.., 4).
        Returns:
            Instances (at most ``max_detections_per_image``) with ``pred_boxes``, ``scores``, ``pred_classes``,
            sorted by decreasing score.
        """
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]

    def _decode_multi_level_predictions(
        self,
        anchors: list[Boxes],
        pred_scores: list[torch.Tensor],
        pred_deltas: list[torch.Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        """:meth:`_decode_per_level_predictions` on every level, concatenated."""
        predictions = [
            self._decode_per_level_predictions(a, s, d, score_thresh, topk_candidates, image_size)
            for s, d, a in zip(pred_scores, pred_deltas, anchors)
        ]
        return Instances.cat(predictions)
