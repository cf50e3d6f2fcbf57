"""Keypoint R-CNN branch: the conv + deconv + upsample head, its heatmap loss and keypoint decoding."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, cpu_channels_last, interpolate
from ...structures import Instances, heatmaps_to_keypoints
from ...utils.events import get_event_storage
from ..build import build_component
from ..registry import ROI_KEYPOINT_HEAD_REGISTRY

__all__ = [
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "build_keypoint_head",
    "BaseKeypointRCNNHead",
    "KRCNNConvDeconvUpsampleHead",
    "keypoint_rcnn_loss",
    "keypoint_rcnn_inference",
]

# Batches whose keypoint loss had nothing to learn from (no visible keypoint inside any proposal), since start-up.
_TOTAL_SKIPPED = 0


def build_keypoint_head(cfg, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> nn.Module:
    """The keypoint head selected by ``cfg.model.roi_keypoint_head`` (``name`` in ROI_KEYPOINT_HEAD_REGISTRY or
    ``_target_``)."""
    return build_component(ROI_KEYPOINT_HEAD_REGISTRY, "model.roi_keypoint_head", cfg, input_shape)


def keypoint_rcnn_loss(
    pred_keypoint_logits: torch.Tensor, instances: list[Instances], normalizer: float | None
) -> torch.Tensor:
    """Spatial softmax cross entropy of each visible keypoint's heatmap against its target pixel.

    Args:
        pred_keypoint_logits: (N, K, S, S) logits, N proposals over the batch in the order of ``instances``.
        instances: per image, proposals with ``proposal_boxes`` and ``gt_keypoints`` (Keypoints, whose
            ``to_heatmap(boxes, S)`` gives the (N, K) target pixel index and validity).
        normalizer: divide the summed loss by this; None divides by the number of visible keypoints.

    Returns:
        scalar loss (0, still connected to the graph, when no keypoint is valid).
    """
    heatmaps = []
    valid = []
    keypoint_side_len = pred_keypoint_logits.shape[2]
    for instances_per_image in instances:
        if len(instances_per_image) == 0:
            continue
        heatmaps_per_image, valid_per_image = instances_per_image.gt_keypoints.to_heatmap(
            instances_per_image.proposal_boxes.tensor, keypoint_side_len
        )
        heatmaps.append(heatmaps_per_image.view(-1))
        valid.append(valid_per_image.view(-1))

    if len(heatmaps):
        keypoint_targets = cat(heatmaps, dim=0).to(pred_keypoint_logits.device)
        valid_inds = torch.nonzero(cat(valid, dim=0)).squeeze(1).to(pred_keypoint_logits.device)

    if len(heatmaps) == 0 or valid_inds.numel() == 0:
        global _TOTAL_SKIPPED
        _TOTAL_SKIPPED += 1
        get_event_storage().put_scalar("kpts_num_skipped_batches", _TOTAL_SKIPPED, smoothing_hint=False)
        return pred_keypoint_logits.sum() * 0

    n, k, h, w = pred_keypoint_logits.shape
    logits = pred_keypoint_logits.reshape(n * k, h * w)
    keypoint_loss = F.cross_entropy(logits[valid_inds], keypoint_targets[valid_inds], reduction="sum")
    if normalizer is None:
        normalizer = valid_inds.numel()
    return keypoint_loss / normalizer


def keypoint_rcnn_inference(pred_keypoint_logits: torch.Tensor, pred_instances: list[Instances]) -> None:
    """Decode heatmaps into keypoints and attach them to each image's instances.

    pred_keypoint_logits: (R, K, S, S) for the ``pred_boxes`` of ``pred_instances`` (R over the batch).
    Sets ``pred_keypoints`` (Ri, K, 3) float ``[x, y, score]`` in image coordinates and ``pred_keypoint_heatmaps``
    (Ri, K, S, S), the raw logits.
    """
    bboxes_flat = cat([b.pred_boxes.tensor for b in pred_instances], dim=0)
    pred_keypoint_logits = pred_keypoint_logits.detach()
    # heatmaps_to_keypoints gives (R, K, 4): x, y, logit, score; keep x, y and the score
    keypoint_results = heatmaps_to_keypoints(pred_keypoint_logits, bboxes_flat.detach())
    idx = torch.tensor([0, 1, 3], device=keypoint_results.device)
    num_instances_per_image = [len(i) for i in pred_instances]
    keypoint_results = keypoint_results[:, :, idx].split(num_instances_per_image, dim=0)
    heatmap_results = pred_keypoint_logits.split(num_instances_per_image, dim=0)
    for kp, hm, instances_per_image in zip(keypoint_results, heatmap_results, pred_instances):
        instances_per_image.pred_keypoints = kp
        instances_per_image.pred_keypoint_heatmaps = hm


class BaseKeypointRCNNHead(nn.Module):
    """Keypoint head base: ``layers(x)`` makes (R, K, S, S) heatmap logits; training returns
    ``{"loss_keypoint"}``, inference fills ``pred_keypoints`` / ``pred_keypoint_heatmaps``."""

    @configurable
    def __init__(self, *, num_keypoints: int, loss_weight: float = 1.0, loss_normalizer: float | str = 1.0) -> None:
        """
        Args:
            num_keypoints: K.
            loss_weight: multiplier of the keypoint loss.
            loss_normalizer: "visible" divides the loss by the number of visible keypoints in the batch; a number
                divides it by ``loss_normalizer * number of images``.
        """
        super().__init__()
        self.num_keypoints = num_keypoints
        self.loss_weight = loss_weight
        if not (loss_normalizer == "visible" or isinstance(loss_normalizer, (int, float))):
            raise ValueError(f"loss_normalizer must be 'visible' or a number, got {loss_normalizer!r}")
        self.loss_normalizer = loss_normalizer if loss_normalizer == "visible" else float(loss_normalizer)

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        cfg = cfg_view(cfg)
        head = cfg.model.roi_keypoint_head
        ret: dict = {"loss_weight": head.loss_weight, "num_keypoints": head.num_keypoints}
        if head.normalize_loss_by_visible_keypoints:
            ret["loss_normalizer"] = "visible"
        else:
            # the expected number of visible keypoints per image when every sampled positive has all of them
            roi = cfg.model.roi_heads
            ret["loss_normalizer"] = float(ret["num_keypoints"] * roi.batch_size_per_image * roi.positive_fraction)
        return ret

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor], instances: list[Instances]):
        """x: pooled ROI features for the boxes of ``instances`` (foreground proposals with a visible keypoint in
        training, predicted boxes in inference). Returns a loss dict in training, the updated ``instances`` in
        inference."""
        x = self.layers(x)
        if self.training:
            num_images = len(instances)
            normalizer = None if self.loss_normalizer == "visible" else num_images * self.loss_normalizer
            return {"loss_keypoint": keypoint_rcnn_loss(x, instances, normalizer=normalizer) * self.loss_weight}
        keypoint_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        """The network: ROI features -> (R, K, S, S) heatmap logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement layers()")


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleHead(BaseKeypointRCNNHead, nn.Sequential):
    """``conv_fcn1..N`` (3x3 conv + ReLU), ``score_lowres`` (4x4 stride-2 transposed conv to K channels), then
    2x bilinear upsampling: input (R, C, S, S) -> logits (R, K, 4S, 4S)."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_keypoints: int, conv_dims: Sequence[int], **kwargs) -> None:
        """
        Args:
            input_shape: shape of the pooled ROI feature.
            num_keypoints: K, the output channels.
            conv_dims: output channels of each 3x3 conv (e.g. eight times 512).
            kwargs: ``loss_weight``, ``loss_normalizer`` of :class:`BaseKeypointRCNNHead`.
        """
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        self.up_scale = 2.0  # bilinear factor after the deconv
        widths = [input_shape.channels, *conv_dims]
        for idx, (c_in, c_out) in enumerate(pairwise(widths), 1):
            self.add_module(f"conv_fcn{idx}", Conv2d(c_in, c_out, 3, stride=1, padding=1))
            self.add_module(f"conv_fcn_relu{idx}", nn.ReLU())
        # kernel 4, stride 2, padding 1: exactly doubles the spatial size
        self.score_lowres = ConvTranspose2d(widths[-1], num_keypoints, 4, stride=2, padding=1)

        # Caffe2's MSRAFill (He-normal, fan-out) for every conv, zero biases; drawn in registration order
        for layer in self.children():
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(layer.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["input_shape"] = input_shape
        ret["conv_dims"] = list(cfg.model.roi_keypoint_head.conv_dims)
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        x = cpu_channels_last(x)  # ROIAlign returns NCHW; the convs run faster in channels-last on the CPU
        for layer in self:
            x = layer(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
