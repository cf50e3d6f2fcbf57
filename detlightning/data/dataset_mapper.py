"""``DatasetMapper``: dataset dict (file names + annotations) -> model input dict (image tensor + Instances)."""
from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detlightning.config import configurable
from detlightning.config.reader import cfg_get

from . import detection_utils as utils
from . import transforms as T

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper:
    """Map one dataset dict to what the model consumes, detectron2's default way:

    1. read ``file_name`` in ``image_format`` and check its size against ``width``/``height``;
    2. apply the augmentations to the image (and ``sem_seg_file_name``'s label map);
    3. build ``image``: (C, H, W) uint8 tensor; ``sem_seg``: (H, W) int64 tensor; ``proposals`` from precomputed
       proposals; in training, ``instances`` (gt_boxes, gt_classes, gt_masks, gt_keypoints) from the
       transformed non-crowd annotations, without empty instances. In inference, annotations are removed.

    ``skip_bad_samples=True`` (training only; a detlightning extension) turns an unreadable image, a size
    mismatch or an invalid annotation into ``None`` — which ``MapDataset`` replaces with another sample — and
    logs a warning naming the file, with a running count. Without it those raise, naming the file.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[T.Augmentation | T.Transform],
        image_format: str,
        use_instance_mask: bool = False,
        use_keypoint: bool = False,
        instance_mask_format: str = "polygon",
        keypoint_hflip_indices: np.ndarray | None = None,
        precomputed_proposal_topk: int | None = None,
        recompute_boxes: bool = False,
        skip_bad_samples: bool = False,
    ):
        if recompute_boxes and not use_instance_mask:
            raise ValueError("recompute_boxes requires instance masks (use_instance_mask=True)")
        if instance_mask_format not in ("polygon", "bitmask"):
            raise ValueError(f"instance_mask_format must be 'polygon' or 'bitmask', got {instance_mask_format!r}")
        self.is_train = is_train
        self.skip_bad_samples = skip_bad_samples
        self._lock = threading.Lock()
        self._num_skipped = 0
        self._warned_no_mask: set[str] = set()
        # How the image is read and augmented.
        self.image_format = image_format
        self.augmentations = T.AugmentationList(augmentations)
        # Which annotation fields become targets, and in what form.
        self.use_keypoint = use_keypoint
        self.keypoint_hflip_indices = keypoint_hflip_indices
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.recompute_boxes = recompute_boxes
        self.proposal_topk = precomputed_proposal_topk
        logger.info(
            "[DatasetMapper] Augmentations used in %s: %s", "training" if is_train else "inference", self.augmentations
        )

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True) -> dict[str, Any]:
        augs = utils.build_augmentation(cfg, is_train)
        if is_train and cfg_get(cfg, "input.crop.enabled"):
            augs.insert(0, T.RandomCrop(cfg_get(cfg, "input.crop.type"), cfg_get(cfg, "input.crop.size")))
            # d2-parity: a crop cuts masks, so the boxes are re-derived from the cropped masks.
            recompute_boxes = bool(cfg_get(cfg, "model.mask_on"))
        else:
            recompute_boxes = False
        ret: dict[str, Any] = {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg_get(cfg, "input.format"),
            "use_instance_mask": bool(cfg_get(cfg, "model.mask_on")),
            "instance_mask_format": cfg_get(cfg, "input.mask_format"),
            "use_keypoint": bool(cfg_get(cfg, "model.keypoint_on")),
            "recompute_boxes": recompute_boxes,
            "skip_bad_samples": bool(cfg_get(cfg, "dataloader.skip_bad_samples")),
        }
        if ret["use_keypoint"]:
            ret["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices(list(cfg_get(cfg, "datasets.train")))
        if cfg_get(cfg, "model.load_proposals"):
            key = "datasets.precomputed_proposal_topk_train" if is_train else "datasets.precomputed_proposal_topk_test"
            ret["precomputed_proposal_topk"] = int(cfg_get(cfg, key))
        return ret

    @property
    def num_skipped(self) -> int:
        """How many samples this mapper (in this process) turned into None because they were bad."""
        return self._num_skipped

    def _transform_annotations(
        self, dataset_dict: dict[str, Any], transforms: T.TransformList, image_shape: tuple[int, int]
    ) -> None:
        file_name = dataset_dict.get("file_name", "?")
        optional_fields = {"segmentation": self.use_instance_mask, "keypoints": self.use_keypoint}
        unwanted = [key for key, enabled in optional_fields.items() if not enabled]
        targets = []
        no_mask = []
        for idx, obj in enumerate(dataset_dict.pop("annotations")):
            utils.validate_annotation(obj, file_name, idx)
            for key in unwanted:
                obj.pop(key, None)
            if obj.get("iscrowd", 0) != 0:
                continue  # crowd regions are not training targets
            if self.use_instance_mask and not utils.has_mask(obj):
                # an instance without a mask cannot be a mask target; the image's other instances keep theirs
                no_mask.append(obj.get("id", f"#{idx}"))
                continue
            targets.append(
                utils.transform_instance_annotations(
                    obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
                )
            )
        if no_mask:
            self._warn_no_mask(file_name, no_mask)
        instances = utils.annotations_to_instances(targets, image_shape, mask_format=self.instance_mask_format)
        # A crop can shrink a mask well inside its box; a tight box around the mask is the better target.
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _warn_no_mask(self, file_name: str, annotation_ids: list[Any]) -> None:
        """Warn once per image (per process) about annotations dropped for lacking a mask."""
        with self._lock:
            if file_name in self._warned_no_mask:
                return
            self._warned_no_mask.add(file_name)
        logger.warning(
            "Image %s: dropped annotation(s) %s from the training targets: no (or an empty) 'segmentation' while "
            "instance masks are on (model.mask_on); the image's other annotations keep their masks.",
            file_name,
            annotation_ids,
        )

    def _load(self, record: dict[str, Any]) -> T.AugInput:
        """Read the image (checked against the recorded size) and, if any, the semantic label map of ``record``
        (whose ``sem_seg_file_name`` is consumed)."""
        image = utils.read_image(record["file_name"], format=self.image_format)
        utils.check_image_size(record, image)
        seg_path = record.pop("sem_seg_file_name", None)
        label_map = None if seg_path is None else utils.read_label_map(seg_path)
        return T.AugInput(image, sem_seg=label_map)

    def _map(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        record = copy.deepcopy(dataset_dict)  # the caller's dict stays untouched
        aug = self._load(record)
        tfms = self.augmentations(aug)
        hw = aug.image.shape[:2]
        # channels first; contiguous so the tensor shares no negative strides with a flipped array.
        record["image"] = torch.as_tensor(np.ascontiguousarray(np.moveaxis(aug.image, -1, 0)))
        if aug.sem_seg is not None:
            record["sem_seg"] = torch.as_tensor(aug.sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(record, hw, tfms, proposal_topk=self.proposal_topk)
        if self.is_train:
            if "annotations" in record:
                self._transform_annotations(record, tfms, hw)
        else:
            # d2-parity: evaluators read annotations from the dataset itself, not from the mapped dicts.
            record.pop("annotations", None)
        return record

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        """dataset_dict: one dict in detectron2's dataset format -> the model input dict (or None when a bad
        sample is skipped)."""
        if not (self.skip_bad_samples and self.is_train):
            return self._map(dataset_dict)
        try:
            return self._map(dataset_dict)
        except (OSError, ValueError, KeyError, TypeError) as e:
            with self._lock:
                self._num_skipped += 1
                count = self._num_skipped
            logger.warning(
                "Skipping bad sample %s (skip_bad_samples=True; %d skipped so far in this process): %s",
                dataset_dict.get("file_name", "?"),
                count,
                e,
            )
            return None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)  # locks do not pickle (data-loader workers)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
