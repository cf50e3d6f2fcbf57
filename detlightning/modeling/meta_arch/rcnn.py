"""R-CNN meta-architectures: ``GeneralizedRCNN`` (backbone -> proposals -> ROI heads) and ``ProposalNetwork``.

Both take detectron2's ``list[dict]`` inputs: per image ``"image"`` ((C, H, W) tensor in ``input_format`` channel
order, uint8 or float, not normalised), optional ``"height"``/``"width"`` (output resolution), and in training
``"instances"`` (ground truth) and, for Fast R-CNN, ``"proposals"``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import move_device_like
from ...structures import ImageList, Instances
from ...utils.events import get_event_storage
from ..backbone import Backbone, build_backbone
from ..postprocessing import detector_postprocess
from ..proposal_generator import build_proposal_generator
from ..registry import META_ARCH_REGISTRY
from ..roi_heads import build_roi_heads
from .inputs import (
    check_batched_inputs,
    collect_gt_instances,
    normalize_images,
    output_sizes,
    register_pixel_stats,
    require_key,
    require_storage,
)

__all__ = ["GeneralizedRCNN", "ProposalNetwork"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module):
    """Generalized R-CNN: a backbone, a proposal generator (or precomputed proposals) and ROI heads.

    Covers Faster / Mask / Keypoint R-CNN and Fast R-CNN, depending on the components.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module | None,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str | None = None,
        vis_period: int = 0,
    ) -> None:
        """
        Args:
            backbone: feature extractor with ``size_divisibility``/``padding_constraints`` and ``output_shape()``.
            proposal_generator: e.g. ``RPN``; ``None`` to read precomputed ``"proposals"`` from the inputs.
            roi_heads: per-region heads called as ``roi_heads(images, features, proposals, targets)``.
            pixel_mean, pixel_std: one value per input channel, used as ``(image - mean) / std``.
            input_format: channel order of the input images ("BGR", "RGB", ...); needed for visualisation.
            vis_period: put a ground-truth vs proposals image into the EventStorage every this many iterations
                (0 = never).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads

        self.input_format = input_format
        self.vis_period = int(vis_period)
        if self.vis_period > 0 and input_format is None:
            raise ValueError("GeneralizedRCNN: input_format is required when vis_period > 0 (for visualisation)")

        register_pixel_stats(self, pixel_mean, pixel_std, "GeneralizedRCNN")

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
            "input_format": cfg.input.format,
            "vis_period": int(cfg.vis_period),
            "pixel_mean": list(cfg.model.pixel_mean),
            "pixel_std": list(cfg.model.pixel_std),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _move_to_current_device(self, x: torch.Tensor) -> torch.Tensor:
        return move_device_like(x, self.pixel_mean)

    def visualize_training(self, batched_inputs: list[dict], proposals: list[Instances]) -> None:
        """Put one image into the EventStorage: the ground-truth boxes (left) next to the 20 best proposals
        (right), both drawn on the input image. Only the first image of the batch is shown."""
        from torchvision.utils import draw_bounding_boxes

        storage = get_event_storage()
        max_vis_prop = 20
        for inp, prop in zip(batched_inputs, proposals):
            img = inp["image"].detach().cpu()
            if self.input_format == "BGR":
                img = img.flip(0)
            elif self.input_format not in ("RGB",):
                raise ValueError(f"visualize_training supports input_format 'BGR' or 'RGB', got {self.input_format!r}")
            img = img.clamp(0, 255).to(torch.uint8)
            gt = inp["instances"].gt_boxes.tensor.detach().cpu()
            n = min(len(prop.proposal_boxes), max_vis_prop)
            pred = prop.proposal_boxes[0:n].tensor.detach().cpu()
            anno_img = draw_bounding_boxes(img, gt, colors="green")
            prop_img = draw_bounding_boxes(img, pred, colors="red")
            vis_img = torch.cat((anno_img, prop_img), dim=2)  # (3, H, 2W)
            storage.put_image("Left: GT bounding boxes;  Right: Predicted proposals", vis_img)
            break

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]] | dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: per image a dict with ``"image"`` ((C, H, W) uint8/float, unnormalised), optionally
                ``"height"``/``"width"`` (output size), in training ``"instances"`` (``gt_boxes``,
                ``gt_classes``, ...), and ``"proposals"`` when there is no proposal generator.
        Returns:
            in inference, per image ``{"instances": Instances}`` (``pred_boxes``, ``scores``, ``pred_classes``,
            plus ``pred_masks`` / ``pred_keypoints`` when the model has those heads) at the output resolution;
            in training, the dict of losses (needs an active EventStorage).
        """
        if not self.training:
            return self.inference(batched_inputs)

        check_batched_inputs(batched_inputs, "GeneralizedRCNN")
        require_storage("GeneralizedRCNN")
        gt_instances = collect_gt_instances(batched_inputs, ("gt_boxes", "gt_classes"), self.device, "GeneralizedRCNN")
        if self.proposal_generator is None:
            require_key(batched_inputs, "proposals", "GeneralizedRCNN", "the model has no proposal generator")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            proposal_losses = {}

        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)

        losses: dict[str, torch.Tensor] = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses

    def inference(
        self,
        batched_inputs: list[dict[str, Any]],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ) -> list[dict[str, Instances]] | list[Instances]:
        """Run inference (eval mode only).

        Args:
            batched_inputs: as in :meth:`forward`.
            detected_instances: per image, known ``pred_boxes`` + ``pred_classes``; when given, box detection is
                skipped and only the other per-ROI outputs (masks, keypoints) are predicted.
            do_postprocess: rescale the outputs to each input's ``"height"``/``"width"``.
        Returns:
            with ``do_postprocess``, as :meth:`forward`; otherwise the raw per-image ``Instances`` at the input
            resolution.
        """
        if self.training:
            raise RuntimeError("GeneralizedRCNN.inference() runs in eval mode; call model.eval() first")
        check_batched_inputs(batched_inputs, "GeneralizedRCNN")
        if detected_instances is None and self.proposal_generator is None:
            require_key(batched_inputs, "proposals", "GeneralizedRCNN", "the model has no proposal generator")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        if detected_instances is None:
            if self.proposal_generator is not None:
                proposals, _ = self.proposal_generator(images, features, None)
            else:
                proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            if len(detected_instances) != len(batched_inputs):
                raise ValueError(
                    f"GeneralizedRCNN.inference: got {len(detected_instances)} detected_instances for "
                    f"{len(batched_inputs)} images"
                )
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)

        if do_postprocess:
            if torch.jit.is_scripting():
                raise RuntimeError("Scripting is not supported for postprocess; use do_postprocess=False")
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise the images, pad them to a common size (``backbone.size_divisibility`` and
        ``padding_constraints``) and batch them into an ``ImageList`` on the model's device."""
        check_batched_inputs(batched_inputs, "GeneralizedRCNN")
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std, "GeneralizedRCNN")
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    @staticmethod
    def _postprocess(
        instances: list[Instances], batched_inputs: list[dict[str, Any]], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Instances]]:
        """Rescale each image's instances to its ``"height"``/``"width"`` (default: the input size)."""
        sizes = output_sizes(batched_inputs, image_sizes)
        return [{"instances": detector_postprocess(inst, h, w)} for inst, (h, w) in zip(instances, sizes)]


@META_ARCH_REGISTRY.register()
class ProposalNetwork(nn.Module):
    """A meta-architecture that only predicts object proposals (backbone + proposal generator)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: feature extractor.
            proposal_generator: e.g. ``RPN``.
            pixel_mean, pixel_std: one value per input channel, used as ``(image - mean) / std``.
        """
        super().__init__()
        if proposal_generator is None:
            raise ValueError(
                "ProposalNetwork needs a proposal generator; model.proposal_generator.name='PrecomputedProposals' "
                "builds none"
            )
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        register_pixel_stats(self, pixel_mean, pixel_std, "ProposalNetwork")

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "pixel_mean": list(cfg.model.pixel_mean),
            "pixel_std": list(cfg.model.pixel_std),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _move_to_current_device(self, x: torch.Tensor) -> torch.Tensor:
        return move_device_like(x, self.pixel_mean)

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise, pad and batch the images (as ``GeneralizedRCNN.preprocess_image``)."""
        check_batched_inputs(batched_inputs, "ProposalNetwork")
        images = normalize_images(batched_inputs, self.pixel_mean, self.pixel_std, "ProposalNetwork")
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]] | dict[str, torch.Tensor]:
        """
        Args:
            batched_inputs: as in :meth:`GeneralizedRCNN.forward` (``"instances"`` with ``gt_boxes`` in training).
        Returns:
            in inference, per image ``{"proposals": Instances}`` (``proposal_boxes``, ``objectness_logits``)
            rescaled to the output resolution; in training, the proposal losses.
        """
        check_batched_inputs(batched_inputs, "ProposalNetwork")
        if self.training:
            require_storage("ProposalNetwork")
            if all("instances" not in x for x in batched_inputs) and all("targets" in x for x in batched_inputs):
                logger.warning("'targets' in the model inputs is now renamed to 'instances'!")
                batched_inputs = [{**x, "instances": x["targets"]} for x in batched_inputs]
            gt_instances: list[Instances] | None = collect_gt_instances(
                batched_inputs, ("gt_boxes",), self.device, "ProposalNetwork"
            )
        elif "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        else:
            gt_instances = None
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        # In training the proposals are computed anyway (the RPN always returns them) but not needed.
        if self.training:
            return proposal_losses

        sizes = output_sizes(batched_inputs, images.image_sizes)
        return [{"proposals": detector_postprocess(p, h, w)} for p, (h, w) in zip(proposals, sizes)]
