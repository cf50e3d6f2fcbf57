"""Mask R-CNN mask branch: the conv + deconv head, its per-pixel loss and test-time mask selection."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, cpu_channels_last, get_norm
from ...layers.weight_init import c2_msra_fill
from ...structures import Instances
from ...utils.events import get_event_storage
from ..build import build_component
from ..registry import ROI_MASK_HEAD_REGISTRY

__all__ = [
    "BaseMaskRCNNHead",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
    "ROI_MASK_HEAD_REGISTRY",
]


def mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: list[Instances], vis_period: int = 0) -> torch.Tensor:
    """Mean per-pixel binary cross entropy between predicted mask logits and rasterised ground truth.

    Args:
        pred_mask_logits: (B, C, M, M) class-specific (C = K) or (B, 1, M, M) class-agnostic logits, B being the
            number of foreground proposals over the batch, in the order of ``instances``.
        instances: per image, the foreground proposals with ``proposal_boxes``, ``gt_classes`` and ``gt_masks``
            (BitMasks / PolygonMasks: anything with ``crop_and_resize(boxes (N, 4), M) -> (N, M, M)``).
        vis_period: every this many iterations, put predicted/target mask images into the event storage (0: never).

    Returns:
        scalar loss; also puts ``mask_rcnn/accuracy``, ``false_positive``, ``false_negative`` into the storage.
    """
    cls_agnostic_mask = pred_mask_logits.size(1) == 1
    total_num_masks = pred_mask_logits.size(0)
    mask_side_len = pred_mask_logits.size(2)
    if pred_mask_logits.size(2) != pred_mask_logits.size(3):
        raise ValueError(f"mask_rcnn_loss: mask predictions must be square, got {tuple(pred_mask_logits.shape)}")

    gt_classes = []
    gt_masks = []
    for instances_per_image in instances:
        if len(instances_per_image) == 0:
            continue
        if not cls_agnostic_mask:
            gt_classes.append(instances_per_image.gt_classes.to(dtype=torch.int64))
        # target = the gt mask cropped to the proposal box and resampled to M x M
        gt_masks_per_image = instances_per_image.gt_masks.crop_and_resize(
            instances_per_image.proposal_boxes.tensor, mask_side_len
        ).to(device=pred_mask_logits.device)
        gt_masks.append(gt_masks_per_image)

    if len(gt_masks) == 0:
        return pred_mask_logits.sum() * 0  # keeps the graph connected

    gt_masks_t = cat(gt_masks, dim=0)
    if cls_agnostic_mask:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        indices = torch.arange(total_num_masks, device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[indices, cat(gt_classes, dim=0).to(pred_mask_logits.device)]

    # crop_and_resize may return bool or soft float targets
    gt_masks_bool = gt_masks_t if gt_masks_t.dtype == torch.bool else gt_masks_t > 0.5
    gt_masks_t = gt_masks_t.to(dtype=torch.float32)

    # training statistics at the 0.5 probability (logit 0) threshold
    mask_incorrect = (pred_mask_logits > 0.0) != gt_masks_bool
    mask_accuracy = 1 - (mask_incorrect.sum().item() / max(mask_incorrect.numel(), 1.0))
    num_positive = gt_masks_bool.sum().item()
    false_positive = (mask_incorrect & ~gt_masks_bool).sum().item() / max(gt_masks_bool.numel() - num_positive, 1.0)
    false_negative = (mask_incorrect & gt_masks_bool).sum().item() / max(num_positive, 1.0)

    storage = get_event_storage()
    storage.put_scalar("mask_rcnn/accuracy", mask_accuracy)
    storage.put_scalar("mask_rcnn/false_positive", false_positive)
    storage.put_scalar("mask_rcnn/false_negative", false_negative)
    if vis_period > 0 and storage.iter % vis_period == 0:
        pred_masks = pred_mask_logits.sigmoid()
        vis_masks = torch.cat([pred_masks, gt_masks_t], dim=2)  # side by side: prediction | target
        name = "Left: mask prediction;   Right: mask GT"
        for idx, vis_mask in enumerate(vis_masks):
            storage.put_image(name + f" ({idx})", torch.stack([vis_mask] * 3, dim=0))

    return F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks_t, reduction="mean")


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: list[Instances]) -> None:
    """Attach ``pred_masks`` (Ri, 1, M, M) foreground probabilities (sigmoid of the logits) to each image's
    instances, taking for class-specific logits (B, K, M, M) the channel of each instance's ``pred_classes``.

    The masks stay at the head's resolution M; pasting into the image is the post-processing's job.
    """
    cls_agnostic_mask = pred_mask_logits.size(1) == 1
    if cls_agnostic_mask:
        mask_probs_pred = pred_mask_logits.sigmoid()
    else:
        num_masks = pred_mask_logits.shape[0]
        class_pred = cat([i.pred_classes for i in pred_instances]).to(pred_mask_logits.device)
        indices = torch.arange(num_masks, device=pred_mask_logits.device)
        mask_probs_pred = pred_mask_logits[indices, class_pred][:, None].sigmoid()

    num_boxes_per_image = [len(i) for i in pred_instances]
    for prob, instances in zip(mask_probs_pred.split(num_boxes_per_image, dim=0), pred_instances):
        instances.pred_masks = prob


class BaseMaskRCNNHead(nn.Module):
    """Mask head base: ``layers(x)`` makes the logits; training returns ``{"loss_mask"}``, inference fills
    ``pred_masks``."""

    @configurable
    def __init__(self, *, loss_weight: float = 1.0, vis_period: int = 0) -> None:
        """
        Args:
            loss_weight: multiplier of the mask loss.
            vis_period: see :func:`mask_rcnn_loss`.
        """
        super().__init__()
        self.vis_period = vis_period
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        cfg = cfg_view(cfg)
        # detectron2's top-level VIS_PERIOD; optional in our config
        return {"vis_period": int(cfg.vis_period)}

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor], instances: list[Instances]):
        """x: pooled ROI features (B, C, S, S) for the boxes of ``instances`` (foreground proposals in training,
        predicted boxes in inference). Returns a loss dict in training, the updated ``instances`` in inference."""
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        """The network: ROI features -> (B, C, M, M) mask logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement layers()")


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(BaseMaskRCNNHead, nn.Sequential):
    """``mask_fcn1..N`` (3x3 conv, norm, ReLU), ``deconv`` (2x2 stride-2 transposed conv) + ReLU, and a 1x1
    ``predictor`` with one output channel per class (or one for class-agnostic masks).

    Input (B, C, S, S) -> logits (B, num_classes, 2S, 2S).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: Sequence[int],
        conv_norm: str | Callable[[int], nn.Module] = "",
        **kwargs,
    ) -> None:
        """
        Args:
            input_shape: shape of the pooled ROI feature.
            num_classes: output channels of the predictor (K, or 1 for class-agnostic masks).
            conv_dims: N >= 1 channel counts: N - 1 convs, then the deconv.
            conv_norm: norm of the convs (see :func:`detlightning.layers.get_norm`).
            kwargs: ``loss_weight``, ``vis_period`` of :class:`BaseMaskRCNNHead`.
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("MaskRCNNConvUpsampleHead: conv_dims must be non-empty (its last entry is the deconv's)")

        # channel count entering / leaving each layer: N - 1 same-size 3x3 convs, then the 2x deconv
        widths = [input_shape.channels, *conv_dims]
        self.conv_norm_relus: list[nn.Module] = [
            Conv2d(
                c_in,
                c_out,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=not conv_norm,  # a norm layer carries the shift
                norm=get_norm(conv_norm, c_out),
                activation=nn.ReLU(),
            )
            for c_in, c_out in pairwise(widths[:-1])
        ]
        for idx, block in enumerate(self.conv_norm_relus, 1):
            self.add_module(f"mask_fcn{idx}", block)

        self.deconv = ConvTranspose2d(widths[-2], widths[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU())
        cur_channels = widths[-1]

        self.predictor = Conv2d(cur_channels, num_classes, kernel_size=1, stride=1, padding=0)

        for layer in self.conv_norm_relus + [self.deconv]:
            c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        cfg = cfg_view(cfg)
        ret = super().from_config(cfg, input_shape)
        head = cfg.model.roi_mask_head
        ret.update(
            input_shape=input_shape,
            conv_dims=[head.conv_dim] * (head.num_conv + 1),  # +1: the deconv
            conv_norm=head.norm,
            num_classes=1 if head.cls_agnostic_mask else cfg.model.roi_heads.num_classes,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        x = cpu_channels_last(x)  # ROIAlign returns NCHW; the convs run faster in channels-last on the CPU
        for layer in self:
            x = layer(x)
        return x


def build_mask_head(cfg, input_shape: ShapeSpec | dict[str, ShapeSpec]) -> nn.Module:
    """The mask head selected by ``cfg.model.roi_mask_head`` (``name`` in ROI_MASK_HEAD_REGISTRY or ``_target_``)."""
    return build_component(ROI_MASK_HEAD_REGISTRY, "model.roi_mask_head", cfg, input_shape)
