"""Semantic segmentation: ``SemanticSegmentor`` (backbone + per-pixel head) and Panoptic FPN's ``SemSegFPNHead``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import Conv2d, ShapeSpec, get_norm
from ...layers.weight_init import c2_msra_fill
from ...structures import ImageList
from ..backbone import Backbone, build_backbone
from ..build import build_component
from ..postprocessing import sem_seg_postprocess
from ..registry import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from .inputs import check_batched_inputs, normalize_images, output_sizes, register_pixel_stats, require_key

__all__ = ["SEM_SEG_HEADS_REGISTRY", "SemSegFPNHead", "SemanticSegmentor", "build_sem_seg_head"]


def _padded_targets(
    batched_inputs: Sequence[dict], backbone: Backbone, ignore_value: int, device: torch.device
) -> torch.Tensor:
    """Each input's ``"sem_seg"`` ((H, W) int class ids) padded like the images, with ``ignore_value``:
    (N, Hpad, Wpad) int64."""
    targets = [x["sem_seg"].to(device) for x in batched_inputs]
    for i, t in enumerate(targets):
        if t.dim() != 2:
            raise ValueError(f"batched_inputs[{i}]['sem_seg'] must be (H, W) class ids, got shape {tuple(t.shape)}")
    return ImageList.from_tensors(
        targets, backbone.size_divisibility, ignore_value, backbone.padding_constraints
    ).tensor.long()


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(nn.Module):
    """A backbone and a semantic segmentation head; outputs per-pixel class logits ``"sem_seg"``."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: feature extractor.
            sem_seg_head: called as ``head(features, targets)`` -> ``(logits or None, losses)``; has
                ``ignore_value``.
            pixel_mean, pixel_std: input normalisation, one value per channel.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        register_pixel_stats(self, pixel_mean, pixel_std, "SemanticSegmentor")

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": list(cfg.model.pixel_mean),
            "pixel_std": list(cfg.model.pixel_std),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: per image ``"image"`` ((C, H, W), unnormalised), optional ``"height"``/``"width"``,
                and in training ``"sem_seg"`` ((H, W) int64 class ids; ``ignore_value`` pixels are skipped).
        Returns:
            training: ``{"loss_sem_seg": scalar}``; inference: per image ``{"sem_seg": (C, height, width)}``
            float logits at the requested output size (default the input size).
        """
        check_batched_inputs(batched_inputs, "SemanticSegmentor")
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std, "SemanticSegmentor")
        images = ImageList.from_tensors(
            images, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )
        features = self.backbone(images.tensor)

        if self.training:
            require_key(batched_inputs, "sem_seg", "SemanticSegmentor", "training needs the ground truth")
        targets = None
        if "sem_seg" in batched_inputs[0]:
            # d2-parity: a given ground truth is padded (and checked) in eval mode too, though the head ignores it
            targets = _padded_targets(batched_inputs, self.backbone, self.sem_seg_head.ignore_value, self.device)
        logits, losses = self.sem_seg_head(features, targets)
        if self.training:
            return losses

        sizes = output_sizes(batched_inputs, images.image_sizes)
        return [
            {"sem_seg": sem_seg_postprocess(per_image, input_size, *out_size)}
            for per_image, input_size, out_size in zip(logits, images.image_sizes, sizes)
        ]


def build_sem_seg_head(cfg: Any, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The head named by ``cfg.model.sem_seg_head`` (``name`` in SEM_SEG_HEADS_REGISTRY, or ``_target_``)."""
    return build_component(SEM_SEG_HEADS_REGISTRY, "model.sem_seg_head", cfg, input_shape)


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNHead(nn.Module):
    """Panoptic FPN's semantic head: each FPN level goes through 3x3 convs and 2x upsamplings down to
    ``common_stride``; the levels are summed and a 1x1 conv predicts the classes."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        loss_weight: float = 1.0,
        norm: str | Callable[[int], nn.Module] | None = None,
        ignore_value: int = -1,
    ) -> None:
        """
        Args:
            input_shape: the feature maps to use, by name (all are used, by increasing stride).
            num_classes: classes predicted per pixel.
            conv_dims: channels of the intermediate convs.
            common_stride: stride every level is brought to before the sum (a power of two).
            loss_weight: multiplier of the cross-entropy loss.
            norm: norm after each conv ("GN", "BN", "" / None for none, or a callable).
            ignore_value: target value excluded from the loss.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("SemSegFPNHead: input_shape is empty; it needs at least one feature map")
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight

        self.scale_heads: list[nn.Sequential] = []
        for name, spec in shapes:
            if spec.stride < common_stride:
                raise ValueError(
                    f"SemSegFPNHead: feature {name!r} has stride {spec.stride} < common_stride {common_stride}"
                )
            head_ops: list[nn.Module] = []
            head_length = max(1, int(math.log2(spec.stride) - math.log2(common_stride)))
            for k in range(head_length):
                conv = Conv2d(
                    spec.channels if k == 0 else conv_dims,
                    conv_dims,
                    kernel_size=3,
                    stride=1,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, conv_dims),
                    activation=F.relu,
                )
                c2_msra_fill(conv)
                head_ops.append(conv)
                if spec.stride != common_stride:
                    head_ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*head_ops))
            # parameter names are the feature names: sem_seg_head.p2.0.weight
            self.add_module(name, self.scale_heads[-1])
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1, stride=1, padding=0)
        c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        node = cfg.model.sem_seg_head
        in_features = list(node.in_features)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise KeyError(
                f"model.sem_seg_head.in_features {missing} are not backbone outputs; those are {sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in in_features},
            "ignore_value": node.ignore_value,
            "num_classes": node.num_classes,
            "conv_dims": node.convs_dim,
            "common_stride": node.common_stride,
            "norm": node.norm,
            "loss_weight": node.loss_weight,
        }

    def forward(
        self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """
        Args:
            features: feature maps by name, (N, C, Hi, Wi).
            targets: (N, H, W) int64 class ids at the padded input resolution (training).
        Returns:
            training: ``(None, {"loss_sem_seg"})``; inference: ``((N, num_classes, H, W) logits, {})``.
        """
        x = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("SemSegFPNHead: targets are required in training")
            return None, self.losses(x, targets)
        x = F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return x, {}

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at ``common_stride``: (N, num_classes, H/s, W/s)."""
        x = self.scale_heads[0](features[self.in_features[0]])
        for i, f in enumerate(self.in_features[1:], start=1):
            x = x + self.scale_heads[i](features[f])
        return self.predictor(x)

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean per-pixel cross entropy (``ignore_value`` excluded) times ``loss_weight``."""
        predictions = predictions.float()  # d2-parity: the loss is computed in fp32 under AMP
        predictions = F.interpolate(predictions, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(predictions, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
