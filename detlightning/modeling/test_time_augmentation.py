"""Test-time augmentation (TTA) for R-CNN models: detectron2's ``DatasetMapperTTA`` and ``GeneralizedRCNNWithTTA``.

``GeneralizedRCNNWithTTA(cfg, model)`` is called like the model it wraps (``list[dict]`` in, ``list[dict]`` out) and
is what ``DefaultTrainer.test_with_TTA`` and ``test.aug.enabled=true`` (TEST.AUG.ENABLED) evaluate with. Per image:

1. ``DatasetMapperTTA`` makes the augmented copies (each shortest-edge size of ``test.aug.min_sizes``, each also
   flipped horizontally with ``test.aug.flip``);
2. the detector runs on all copies with its mask/keypoint branches off; each copy's boxes are mapped back to the
   original image and the union is reduced by per-class NMS (the box predictor's ``test_nms_thresh`` and
   ``test_topk_per_image``);
3. with masks, the mask head runs on the merged boxes in every copy and the per-box mask probabilities are
   averaged (flipped copies flipped back first) before pasting.

Keypoint models and models on precomputed proposals are refused, as in detectron2.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import configurable
from ..config.reader import cfg_get
from ..data import transforms as T
from ..data.detection_utils import read_image
from ..structures import Boxes, Instances
from .meta_arch.rcnn import GeneralizedRCNN
from .postprocessing import detector_postprocess
from .roi_heads.fast_rcnn import fast_rcnn_inference_single_image

__all__ = ["DatasetMapperTTA", "GeneralizedRCNNWithTTA"]


class DatasetMapperTTA:
    """Model input dict -> its test-time augmented versions.

    For every size in ``min_sizes`` (in order): the image resized so its shorter side is that size (the longer
    side capped at ``max_size``), then, with ``flip``, that resize followed by a horizontal flip; so
    ``len(min_sizes) * (2 if flip else 1)`` dicts. Each is a copy of the input with ``image`` ((C, H, W) uint8
    tensor) replaced and ``transforms`` added: the ``TransformList`` taking the original image (``height`` x
    ``width``, default: the input image's size) to the augmented one.
    """

    @configurable
    def __init__(self, min_sizes: Sequence[int], max_size: int, flip: bool = True):
        if len(min_sizes) == 0:
            raise ValueError("DatasetMapperTTA: min_sizes (test.aug.min_sizes / TEST.AUG.MIN_SIZES) is empty; "
                             "expected at least one shortest-edge size")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        return {
            "min_sizes": list(cfg_get(cfg, "test.aug.min_sizes")),
            "max_size": int(cfg_get(cfg, "test.aug.max_size")),
            "flip": bool(cfg_get(cfg, "test.aug.flip")),
        }

    def _augmentation_lists(self) -> list[list[T.Augmentation]]:
        out: list[list[T.Augmentation]] = []
        for size in self.min_sizes:
            resize = T.ResizeShortestEdge(size, self.max_size)
            out.append([resize])
            if self.flip:
                out.append([resize, T.RandomFlip(prob=1.0)])
        return out

    def __call__(self, dataset_dict: dict[str, Any]) -> list[dict[str, Any]]:
        """dataset_dict: a model input dict with ``image`` (C, H, W) -> one dict per augmentation (see class)."""
        image = dataset_dict["image"]
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise TypeError(f"DatasetMapperTTA: 'image' must be a (C, H, W) tensor, got "
                            f"{getattr(image, 'shape', type(image).__name__)}")
        hwc = image.detach().cpu().permute(1, 2, 0).numpy()
        in_hw = tuple(hwc.shape[:2])
        orig_hw = (int(dataset_dict.get("height", in_hw[0])), int(dataset_dict.get("width", in_hw[1])))
        # the input may already be a resized copy of the original (a test loader's resize): start from the original
        to_input: T.Transform = (
            T.NoOpTransform() if in_hw == orig_hw else T.ResizeTransform(orig_hw[0], orig_hw[1], in_hw[0], in_hw[1])
        )
        rest = {k: v for k, v in dataset_dict.items() if k != "image"}
        outputs = []
        for augs in self._augmentation_lists():
            aug_image, tfms = T.apply_augmentations(augs, np.copy(hwc))
            record = copy.deepcopy(rest)
            record["image"] = torch.from_numpy(np.ascontiguousarray(aug_image.transpose(2, 0, 1)))
            record["transforms"] = to_input + tfms
            outputs.append(record)
        return outputs


class GeneralizedRCNNWithTTA(nn.Module):
    """A :class:`GeneralizedRCNN` evaluated with test-time augmentation (see the module docstring); called like
    the model: ``list[dict]`` inputs (``image``, or ``file_name`` read in the model's ``input_format``) ->
    ``list[{"instances": Instances}]`` at each input's ``height`` x ``width``.

    Args:
        cfg: the config (``DictConfig`` or ``CfgNode``); only read for the default ``tta_mapper``.
        model: the ``GeneralizedRCNN`` (or a DDP wrapper of one), in eval mode.
        tta_mapper: input dict -> list of augmented dicts, each with ``transforms``; default
            ``DatasetMapperTTA(cfg)``.
        batch_size: how many augmented images go through the model at once.
    """

    def __init__(self, cfg: Any, model: nn.Module, tta_mapper: Any = None, batch_size: int = 3):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(f"GeneralizedRCNNWithTTA: TTA needs a GeneralizedRCNN model, got {type(model).__name__}")
        if getattr(model.roi_heads, "keypoint_on", False):
            raise ValueError("GeneralizedRCNNWithTTA: TTA for keypoint models (model.keypoint_on / "
                             "MODEL.KEYPOINT_ON) is not supported, as in detectron2")
        if model.proposal_generator is None:
            raise ValueError("GeneralizedRCNNWithTTA: TTA with precomputed proposals (model.load_proposals / "
                             "MODEL.LOAD_PROPOSALS) is not supported, as in detectron2")
        if batch_size < 1:
            raise ValueError(f"GeneralizedRCNNWithTTA: batch_size must be >= 1, got {batch_size}")
        self.cfg = copy.deepcopy(cfg)
        self.model = model
        self.tta_mapper = DatasetMapperTTA(cfg) if tta_mapper is None else tta_mapper
        self.batch_size = int(batch_size)
        # follow the model's mode, so evaluation helpers that restore "the previous mode" restore the model's own
        self.train(model.training)

    @contextmanager
    def _turn_off_roi_heads(self, attrs: Sequence[str]) -> Iterator[None]:
        """Within the block, set the ``model.roi_heads`` flags ``attrs`` (e.g. ``mask_on``) that exist to False."""
        roi_heads = self.model.roi_heads
        saved = {a: getattr(roi_heads, a) for a in attrs if hasattr(roi_heads, a)}
        for attr in saved:
            setattr(roi_heads, attr, False)
        try:
            yield
        finally:
            for attr, value in saved.items():
                setattr(roi_heads, attr, value)

    def _batch_inference(
        self, batched_inputs: list[dict[str, Any]], detected_instances: list[Instances] | None = None
    ) -> list[Instances]:
        """``model.inference(..., do_postprocess=False)`` in chunks of ``batch_size`` images: raw per-image
        Instances at each augmented image's resolution."""
        outputs: list[Instances] = []
        for start in range(0, len(batched_inputs), self.batch_size):
            stop = start + self.batch_size
            given = None if detected_instances is None else detected_instances[start:stop]
            outputs.extend(self.model.inference(batched_inputs[start:stop], given, do_postprocess=False))
        return outputs

    def _maybe_read_image(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        record = copy.copy(dataset_dict)
        if "image" not in record:
            if "file_name" not in record:
                raise KeyError("GeneralizedRCNNWithTTA: an input dict needs 'image' or 'file_name'")
            array = read_image(record.pop("file_name"), self.model.input_format)
            record["image"] = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        record.setdefault("height", int(record["image"].shape[1]))
        record.setdefault("width", int(record["image"].shape[2]))
        return record

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        """Same inputs and outputs as ``GeneralizedRCNN.forward`` in eval mode."""
        return [self._inference_one_image(self._maybe_read_image(x)) for x in batched_inputs]

    def _inference_one_image(self, input: dict[str, Any]) -> dict[str, Instances]:
        orig_hw = (int(input["height"]), int(input["width"]))
        augmented_inputs, tfms = self._get_augmented_inputs(input)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
        merged = self._merge_detections(all_boxes, all_scores, all_classes, orig_hw)
        if not getattr(self.model.roi_heads, "mask_on", False):
            # d2-parity: boxes are already in the original frame (clipped there); no detector_postprocess
            return {"instances": merged}
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        return {"instances": detector_postprocess(merged, *orig_hw)}

    def _get_augmented_inputs(self, input: dict[str, Any]) -> tuple[list[dict[str, Any]], list[T.TransformList]]:
        augmented = self.tta_mapper(input)
        tfms = [x.pop("transforms") for x in augmented]
        return augmented, tfms

    def _get_augmented_boxes(
        self, augmented_inputs: list[dict[str, Any]], tfms: list[T.TransformList]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detect in every augmented image; returns boxes (N, 4) in the original image, scores (N,), classes (N,)
        of all augmentations together."""
        outputs = self._batch_inference(augmented_inputs)
        boxes, scores, classes = [], [], []
        for output, tfm in zip(outputs, tfms):
            pred = output.pred_boxes.tensor
            back = tfm.inverse().apply_box(pred.detach().cpu().numpy())
            boxes.append(torch.as_tensor(back, dtype=pred.dtype, device=pred.device))
            scores.append(output.scores)
            classes.append(output.pred_classes)
        return torch.cat(boxes), torch.cat(scores), torch.cat(classes)

    def _box_predictor(self) -> nn.Module:
        predictor = self.model.roi_heads.box_predictor
        # cascade heads: one predictor per stage, the last one decides the test-time settings
        return predictor[-1] if isinstance(predictor, nn.ModuleList) else predictor

    def _merge_detections(
        self, all_boxes: torch.Tensor, all_scores: torch.Tensor, all_classes: torch.Tensor, shape_hw: tuple[int, int]
    ) -> Instances:
        """Per-class NMS over the union of all augmentations' detections (boxes in the original image)."""
        predictor = self._box_predictor()
        num_classes = int(predictor.num_classes)
        # fast_rcnn_inference_single_image takes (R, K + 1) class scores (last column: background): each box scores
        # only for its own class
        scores_2d = all_scores.new_zeros((len(all_boxes), num_classes + 1))
        scores_2d[torch.arange(len(all_boxes), device=all_boxes.device), all_classes] = all_scores
        merged, _ = fast_rcnn_inference_single_image(
            all_boxes, scores_2d, shape_hw, 1e-8, float(predictor.test_nms_thresh), int(predictor.test_topk_per_image)
        )
        return merged

    def _rescale_detected_boxes(
        self, augmented_inputs: list[dict[str, Any]], merged: Instances, tfms: list[T.TransformList]
    ) -> list[Instances]:
        """The merged detections in each augmented image's frame."""
        boxes = merged.pred_boxes.tensor
        boxes_np = boxes.detach().cpu().numpy()
        out = []
        for input, tfm in zip(augmented_inputs, tfms):
            moved = torch.as_tensor(tfm.apply_box(boxes_np), dtype=boxes.dtype, device=boxes.device)
            out.append(Instances(
                tuple(input["image"].shape[1:3]),
                pred_boxes=Boxes(moved),
                pred_classes=merged.pred_classes,
                scores=merged.scores,
            ))
        return out

    def _reduce_pred_masks(self, outputs: list[Instances], tfms: list[T.TransformList]) -> torch.Tensor:
        """Mean over augmentations of the (N, 1, M, M) box-frame mask probabilities. A box-frame mask does not
        change under resizing; a flipped image's masks are flipped back."""
        masks = []
        for output, tfm in zip(outputs, tfms):
            flipped = any(isinstance(t, T.HFlipTransform) for t in getattr(tfm, "transforms", [tfm]))
            masks.append(output.pred_masks.flip(dims=[3]) if flipped else output.pred_masks)
        return torch.stack(masks).mean(dim=0)
