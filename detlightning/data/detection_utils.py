"""Helpers that dataset mappers (ours and users') call: read images, transform annotations, build ``Instances``.

Same names and semantics as ``detectron2.data.detection_utils``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from detlightning.config.reader import cfg_get
from detlightning.structures import BitMasks, Boxes, BoxMode, Instances, Keypoints, PolygonMasks, polygons_to_bitmask

from . import transforms as T
from .catalog import MetadataCatalog
from .validate import SIXTEEN_BIT_MODES, annotation_problems

__all__ = [
    "SizeMismatchError",
    "convert_image_to_rgb",
    "check_image_size",
    "transform_proposals",
    "transform_instance_annotations",
    "annotations_to_instances",
    "build_augmentation",
    "build_augmentation_list",
    "build_transform_gen",
    "create_keypoint_hflip_indices",
    "filter_empty_instances",
    "gen_crop_transform_with_instance",
    "get_fed_loss_cls_weights",
    "read_image",
    "check_metadata_consistency",
    "validate_annotation",
    "read_label_map",
    "has_mask",
]

logger = logging.getLogger(__name__)


class SizeMismatchError(ValueError):
    """The image read from disk does not have the width/height stated in its dataset dict."""


# https://en.wikipedia.org/wiki/YUV#SDTV_with_BT.601
_M_RGB2YUV = [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]
_M_YUV2RGB = [[1.0, 0.0, 1.13983], [1.0, -0.39465, -0.58060], [1.0, 2.03211, 0.0]]


def convert_PIL_to_numpy(image: Image.Image, format: str | None) -> np.ndarray:  # noqa: N802 (d2 name)
    """PIL image -> (H, W, C) array in ``format`` ("BGR", "RGB", "L", "YUV-BT.601" or any PIL mode).

    "L" gives (H, W, 1) uint8; "YUV-BT.601" gives float in roughly [0, 1]; None keeps the file's mode.
    """
    if format is not None:
        conversion_format = "RGB" if format in ("BGR", "YUV-BT.601") else format
        image = image.convert(conversion_format)
    arr = np.asarray(image)
    if format == "L":
        arr = np.expand_dims(arr, -1)
    elif format == "BGR":
        arr = arr[:, :, ::-1]
    elif format == "YUV-BT.601":
        arr = np.dot(arr / 255.0, np.array(_M_RGB2YUV).T)
    return arr


def convert_image_to_rgb(image: np.ndarray | torch.Tensor, format: str) -> np.ndarray:
    """(H, W, C) image in ``format`` -> (H, W, 3) uint8 RGB (for visualisation)."""
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if format == "BGR":
        image = image[:, :, [2, 1, 0]]
    elif format == "YUV-BT.601":
        image = np.dot(image, np.array(_M_YUV2RGB).T) * 255.0
    else:
        if format == "L":
            image = image[:, :, 0]
        image = np.asarray(Image.fromarray(image.astype(np.uint8), mode=format).convert("RGB"))
    return np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image


def _open_image(file_name: str) -> Image.Image:
    """The decoded PIL image of ``file_name``, upright per its EXIF orientation; errors name the file."""
    try:
        with open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: {file_name}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot read image file {file_name} (corrupt or not an image): {e}") from e
    # Phone photos store the camera's orientation in EXIF; the annotations refer to the upright image.
    return ImageOps.exif_transpose(image)


def _high_bit_depth_values(image: Image.Image, file_name: str) -> np.ndarray | None:
    """The pixel values of a 16-bit grayscale (or 32-bit integer holding 16-bit data) image as an integer array;
    None for other modes. Float images and integer values outside [0, 65535] are refused, naming the file."""
    if image.mode == "F":
        raise ValueError(
            f"Image {file_name} has 32-bit float pixels (PIL mode F), which cannot be converted to an 8-bit "
            "image without knowing their range; convert it to an 8-bit RGB or grayscale file"
        )
    if image.mode not in SIXTEEN_BIT_MODES and image.mode != "I":
        return None
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"Image {file_name} is a 32-bit integer image (PIL mode {image.mode}) with values in "
            f"[{values.min()}, {values.max()}]; only 8-bit and 16-bit images are supported"
        )
    return values


def read_image(file_name: str, format: str | None = None) -> np.ndarray:
    """Read an image file, apply its EXIF orientation, and convert it to ``format``.

    Returns (H, W, C) uint8 ((H, W, 1) for "L"; (H, W) for format=None with a single-channel file).
    16-bit grayscale files are scaled to 8 bits (``>> 8``: 65535 -> 255) before the conversion; ``format=None``
    keeps their raw uint16 values. Raises FileNotFoundError for a missing file and ValueError (naming the file)
    for an unreadable one or a float/32-bit image.
    """
    image = _open_image(file_name)
    if format is not None:
        values = _high_bit_depth_values(image, file_name)
        if values is not None:
            image = Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    return convert_PIL_to_numpy(image, format)


def read_label_map(file_name: str) -> np.ndarray:
    """A semantic-segmentation label map as an (H, W) uint8 array of class ids (detectron2 reads it as "L").

    16-bit files keep their values (no scaling: they are ids, not intensities) and are refused, naming the
    file, when an id exceeds 255."""
    image = _open_image(file_name)
    values = _high_bit_depth_values(image, file_name)
    if values is None:
        return convert_PIL_to_numpy(image, "L")[:, :, 0]
    if values.size and values.max() > 255:
        raise ValueError(
            f"Semantic label map {file_name} (PIL mode {image.mode}) has label values up to {values.max()}; "
            "labels must be in [0, 255] (use 255 for 'ignore')"
        )
    return values.astype(np.uint8)


def check_image_size(dataset_dict: dict[str, Any], image: np.ndarray) -> None:
    """Raise SizeMismatchError when ``image`` is not the ``width`` x ``height`` the dict states; fill them in
    when absent."""
    if "width" in dataset_dict or "height" in dataset_dict:
        image_wh = (image.shape[1], image.shape[0])
        expected_wh = (dataset_dict["width"], dataset_dict["height"])
        if image_wh != expected_wh:
            where = f" for image {dataset_dict['file_name']}" if "file_name" in dataset_dict else ""
            raise SizeMismatchError(
                f"Mismatched image shape{where}, got {image_wh}, expect {expected_wh}. "
                "Please check the width/height in your annotation."
            )
    if "width" not in dataset_dict:
        dataset_dict["width"] = image.shape[1]
    if "height" not in dataset_dict:
        dataset_dict["height"] = image.shape[0]


def transform_proposals(
    dataset_dict: dict[str, Any],
    image_shape: tuple[int, int],
    transforms: T.TransformList,
    *,
    proposal_topk: int,
    min_box_size: float = 0,
) -> None:
    """Move precomputed ``proposal_boxes`` / ``proposal_objectness_logits`` / ``proposal_bbox_mode`` of
    ``dataset_dict`` into ``dataset_dict["proposals"]``: an Instances with ``proposal_boxes`` (transformed,
    clipped, non-empty, top ``proposal_topk``) and ``objectness_logits``."""
    if "proposal_boxes" not in dataset_dict:
        return
    raw_boxes, raw_mode = dataset_dict.pop("proposal_boxes"), dataset_dict.pop("proposal_bbox_mode")
    scores = torch.as_tensor(dataset_dict.pop("proposal_objectness_logits").astype("float32"))
    boxes = Boxes(transforms.apply_box(BoxMode.convert(raw_boxes, raw_mode, BoxMode.XYXY_ABS)))
    boxes.clip(image_shape)
    # Non-empty boxes first, then the first ``proposal_topk`` of them (proposal files are stored by score).
    selected = torch.nonzero(boxes.nonempty(threshold=min_box_size)).flatten()[:proposal_topk]
    result = Instances(image_shape)
    result.proposal_boxes = boxes[selected]
    result.objectness_logits = scores[selected]
    dataset_dict["proposals"] = result


def get_bbox(annotation: dict[str, Any]) -> np.ndarray:
    """The annotation's box as (4,) XYXY_ABS."""
    return BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)


def validate_annotation(annotation: dict[str, Any], file_name: str = "?", index: int | None = None) -> None:
    """Raise ValueError/KeyError (naming the image file and the annotation id or index) for an annotation without
    a usable ``bbox`` (4 finite numbers below 2^31, non-negative size), ``bbox_mode``, integer ``category_id``
    or 0/1 ``iscrowd``, or with malformed ``segmentation`` / ``keypoints`` (see
    :func:`detlightning.data.validate.annotation_problems`)."""
    ident = annotation.get("id", index)
    where = f"image {file_name}, annotation {'id ' if 'id' in annotation else '#'}{ident}"
    for problem in annotation_problems(annotation, where):
        if problem.severity == "error":
            raise (KeyError if problem.kind == "missing_key" else ValueError)(problem.message)


def has_mask(annotation: dict[str, Any]) -> bool:
    """Whether ``annotation`` has a non-empty ``segmentation`` (polygons, RLE dict or mask array)."""
    segm = annotation.get("segmentation")
    if segm is None:
        return False
    if isinstance(segm, np.ndarray):
        return True
    return len(segm) > 0


def _transform_segmentation(
    segm: Any, transforms: T.TransformList, image_size: tuple[int, int]
) -> list[np.ndarray] | np.ndarray:
    """Polygons (list of flat coordinate lists) stay flat polygons; an RLE dict or a binary (H, W) array becomes
    the transformed (H, W) mask."""
    if isinstance(segm, list):
        moved = transforms.apply_polygons([np.asarray(poly).reshape(-1, 2) for poly in segm])
        return [poly.reshape(-1) for poly in moved]
    if isinstance(segm, np.ndarray):
        return transforms.apply_segmentation(segm)
    if not isinstance(segm, dict):
        raise ValueError(
            f"Cannot transform segmentation of type '{type(segm).__name__}'! Supported types are: polygons "
            "as list[list[float] or ndarray], COCO-style RLE as a dict, or a binary (H, W) ndarray."
        )
    decoded = transforms.apply_segmentation(mask_util.decode(segm))
    if tuple(decoded.shape[:2]) != tuple(image_size):
        raise ValueError(f"Transformed RLE mask has shape {decoded.shape[:2]}, expected {image_size}")
    return decoded


def transform_instance_annotations(
    annotation: dict[str, Any],
    transforms: T.TransformList | Sequence[T.Transform],
    image_size: tuple[int, int],
    *,
    keypoint_hflip_indices: np.ndarray | None = None,
) -> dict[str, Any]:
    """Apply ``transforms`` to one instance annotation, in place (and returned).

    ``bbox`` becomes XYXY_ABS clipped to ``image_size = (h, w)``; polygon ``segmentation`` stays polygons,
    RLE becomes a (h, w) uint8 mask; ``keypoints`` become an (K, 3) float array (see
    ``transform_keypoint_annotations``).
    """
    if isinstance(transforms, (tuple, list)):
        transforms = T.TransformList(transforms)
    bbox = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    bbox = transforms.apply_box(np.array([bbox]))[0].clip(min=0)
    annotation["bbox"] = np.minimum(bbox, list(image_size + image_size)[::-1])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS

    if "segmentation" in annotation:
        annotation["segmentation"] = _transform_segmentation(annotation["segmentation"], transforms, image_size)

    if "keypoints" in annotation:
        annotation["keypoints"] = transform_keypoint_annotations(
            annotation["keypoints"], transforms, image_size, keypoint_hflip_indices
        )
    return annotation


def transform_keypoint_annotations(
    keypoints: Sequence[float] | np.ndarray,
    transforms: T.TransformList,
    image_size: tuple[int, int],
    keypoint_hflip_indices: np.ndarray | None = None,
) -> np.ndarray:
    """Flat ``[x, y, v] * K`` keypoints -> transformed (K, 3) float64 array.

    Keypoints that leave the image get visibility 0; an odd number of horizontal flips swaps left/right
    keypoints through ``keypoint_hflip_indices``; unlabelled keypoints (v == 0) are set to (0, 0, 0).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    keypoints_xy = transforms.apply_coords(keypoints[:, :2])
    inside = (keypoints_xy >= np.array([0, 0])) & (keypoints_xy <= np.array(image_size[::-1]))
    inside = inside.all(axis=1)
    keypoints[:, :2] = keypoints_xy
    keypoints[:, 2][~inside] = 0

    tfms = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    do_hflip = sum(isinstance(t, T.HFlipTransform) for t in tfms) % 2 == 1
    if do_hflip:
        if keypoint_hflip_indices is None:
            raise ValueError("Cannot flip keypoints without providing flip indices!")
        if len(keypoints) != len(keypoint_hflip_indices):
            raise ValueError(
                f"Keypoint data has {len(keypoints)} points, but metadata contains {len(keypoint_hflip_indices)} "
                "points!"
            )
        keypoints = keypoints[np.asarray(keypoint_hflip_indices, dtype=np.int64), :]
    # d2-parity: COCO writes unlabelled keypoints as (0, 0, 0).
    keypoints[keypoints[:, 2] == 0] = 0
    return keypoints


def annotations_to_instances(
    annos: list[dict[str, Any]], image_size: tuple[int, int], mask_format: str = "polygon"
) -> Instances:
    """Build the training target of one image from transformed annotations.

    Returns Instances with ``gt_boxes`` (Boxes, (N, 4) float32), ``gt_classes`` ((N,) int64), ``gt_masks``
    (PolygonMasks or BitMasks (N, H, W) bool, when annotations have ``segmentation``) and ``gt_keypoints``
    (Keypoints (N, K, 3), when annotations have ``keypoints``).
    """
    boxes = (
        np.stack([BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS) for obj in annos])
        if len(annos)
        else np.zeros((0, 4))
    )
    target = Instances(image_size)
    target.gt_boxes = Boxes(torch.as_tensor(np.asarray(boxes, dtype=np.float32)))
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)

    # a polygon list can be empty here: an instance cropped away by the augmentation (filtered out later)
    with_mask = ["segmentation" in obj for obj in annos]
    if any(with_mask) and not all(with_mask):
        missing = [i for i, m in enumerate(with_mask) if not m]
        raise ValueError(
            f"Annotations #{missing} of this image have no 'segmentation' while the others have "
            "masks; drop them before annotations_to_instances (DatasetMapper drops them with a warning) so the "
            "other instances keep their masks"
        )
    if len(annos) and with_mask[0]:
        segms = [obj["segmentation"] for obj in annos]
        if mask_format == "polygon":
            try:
                masks: PolygonMasks | BitMasks = PolygonMasks(segms)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    "Failed to use mask_format=='polygon' from the given annotations (RLE masks need "
                    "mask_format='bitmask')!"
                ) from e
        elif mask_format == "bitmask":
            bitmasks = []
            for segm in segms:
                if isinstance(segm, list):
                    bitmasks.append(polygons_to_bitmask(segm, *image_size))
                elif isinstance(segm, dict):
                    bitmasks.append(mask_util.decode(segm))
                elif isinstance(segm, np.ndarray):
                    if segm.ndim != 2:
                        raise ValueError(f"Expect segmentation of 2 dimensions, got {segm.ndim}.")
                    bitmasks.append(segm)
                else:
                    raise ValueError(
                        f"Cannot convert segmentation of type '{type(segm).__name__}' to BitMasks! Supported "
                        "types are: polygons as list[list[float] or ndarray], COCO-style RLE as a dict, or a "
                        "binary segmentation mask in a 2D numpy array of shape HxW."
                    )
            masks = BitMasks(
                torch.stack([torch.from_numpy(np.ascontiguousarray(x)).to(torch.bool) for x in bitmasks])
            )
        else:
            raise ValueError(f"input.mask_format must be 'polygon' or 'bitmask', got {mask_format!r}")
        target.gt_masks = masks

    if len(annos) and "keypoints" in annos[0]:
        kpts = [np.asarray(obj.get("keypoints", []), dtype=np.float32).reshape(-1, 3) for obj in annos]
        num = {len(k) for k in kpts}
        if len(num) != 1:
            raise ValueError(
                f"All annotations of an image need the same number of keypoints, got counts {sorted(num)}"
            )
        target.gt_keypoints = Keypoints(torch.from_numpy(np.stack(kpts)))
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
) -> Instances | tuple[Instances, torch.Tensor]:
    """Drop instances whose box (side <= ``box_threshold``) or mask is empty; optionally return the keep mask."""
    r = []
    if by_box:
        r.append(instances.gt_boxes.nonempty(threshold=box_threshold))
    if instances.has("gt_masks") and by_mask:
        r.append(instances.gt_masks.nonempty())
    if not r:
        return (instances, torch.ones(len(instances), dtype=torch.bool)) if return_mask else instances
    m = r[0]
    for x in r[1:]:
        m = m & x
    if return_mask:
        return instances[m], m
    return instances[m]


def create_keypoint_hflip_indices(dataset_names: str | Sequence[str]) -> np.ndarray:
    """(K,) int64 index array: position ``i`` holds the index of keypoint ``i``'s mirror image, from the datasets'
    ``keypoint_names`` and ``keypoint_flip_map`` (which must agree across ``dataset_names``)."""
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    dataset_names = list(dataset_names)
    check_metadata_consistency("keypoint_names", dataset_names)
    check_metadata_consistency("keypoint_flip_map", dataset_names)
    meta = MetadataCatalog.get(dataset_names[0])
    names = list(meta.keypoint_names)
    flip_map = dict(meta.keypoint_flip_map)
    flip_map.update({v: k for k, v in flip_map.items()})
    flipped_names = [i if i not in flip_map else flip_map[i] for i in names]
    flip_indices = [names.index(i) for i in flipped_names]
    return np.asarray(flip_indices, dtype=np.int64)


def get_fed_loss_cls_weights(dataset_names: str | Sequence[str], freq_weight_power: float = 1.0) -> torch.Tensor:
    """(C,) float per-class weights ``image_count ** freq_weight_power`` from the metadata's
    ``class_image_count`` (federated loss, LVIS)."""
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    check_metadata_consistency("class_image_count", dataset_names)
    meta = MetadataCatalog.get(dataset_names[0])
    class_freq_meta = meta.class_image_count
    class_freq = torch.tensor([c["image_count"] for c in sorted(class_freq_meta, key=lambda x: x["id"])])
    return class_freq.float() ** freq_weight_power


def gen_crop_transform_with_instance(
    crop_size: tuple[int, int], image_size: tuple[int, int], instance: dict[str, Any]
) -> T.CropTransform:
    """A random ``crop_size = (h, w)`` crop of an ``image_size`` image that contains the centre of
    ``instance``'s box."""
    crop_size = np.asarray(crop_size, dtype=np.int32)
    bbox = BoxMode.convert(instance["bbox"], instance["bbox_mode"], BoxMode.XYXY_ABS)
    center_yx = (bbox[1] + bbox[3]) * 0.5, (bbox[0] + bbox[2]) * 0.5
    if not (image_size[0] >= center_yx[0] and image_size[1] >= center_yx[1]):
        raise ValueError("The annotation bounding box is outside of the image!")
    if not (image_size[0] >= crop_size[0] and image_size[1] >= crop_size[1]):
        raise ValueError("Crop size is larger than image size!")
    min_yx = np.maximum(np.floor(center_yx).astype(np.int32) - crop_size, 0)
    max_yx = np.maximum(np.asarray(image_size, dtype=np.int32) - crop_size, 0)
    max_yx = np.minimum(max_yx, np.ceil(center_yx).astype(np.int32))
    y0 = np.random.randint(min_yx[0], max_yx[0] + 1)
    x0 = np.random.randint(min_yx[1], max_yx[1] + 1)
    return T.CropTransform(int(x0), int(y0), int(crop_size[1]), int(crop_size[0]))


def check_metadata_consistency(key: str, dataset_names: Sequence[str]) -> None:
    """Raise ValueError when the metadata ``key`` differs between ``dataset_names`` (AttributeError when a
    dataset lacks it)."""
    if len(dataset_names) == 0:
        return
    entries_per_dataset = [getattr(MetadataCatalog.get(d), key) for d in dataset_names]
    for idx, entry in enumerate(entries_per_dataset):
        if _normalise(entry) != _normalise(entries_per_dataset[0]):
            logger.error("Metadata '%s' for dataset '%s' is '%s'", key, dataset_names[idx], entry)
            logger.error("Metadata '%s' for dataset '%s' is '%s'", key, dataset_names[0], entries_per_dataset[0])
            raise ValueError(
                f"Datasets have different metadata '{key}': '{dataset_names[idx]}' and '{dataset_names[0]}'"
            )


def _normalise(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_normalise(v) for v in x]
    return x


def build_augmentation_list(specs: Sequence[Any]) -> list[T.Augmentation]:
    """Instantiate augmentations from ``_target_`` specs, e.g.
    ``[{"_target_": "detlightning.data.transforms.RandomFlip", "prob": 0.5}]``; objects pass through."""
    from hydra.utils import instantiate

    augs = []
    for i, spec in enumerate(specs):
        if isinstance(spec, (T.Augmentation, T.Transform)):
            augs.append(spec)
            continue
        if not (isinstance(spec, dict) or isinstance(spec, DictConfig)) or "_target_" not in spec:
            raise ValueError(f"Augmentation #{i} must be a mapping with a '_target_' key, got {spec!r}")
        obj = instantiate(spec, _convert_="all")
        if not isinstance(obj, (T.Augmentation, T.Transform)):
            raise TypeError(f"Augmentation #{i} ({spec['_target_']}) built a {type(obj).__name__}, not an Augmentation")
        augs.append(obj)
    return augs


def build_augmentation(cfg: Any, is_train: bool) -> list[T.Augmentation]:
    """The default augmentations from ``cfg.input``: ResizeShortestEdge, plus RandomFlip when training.

    If ``cfg.input.augmentations_train`` / ``augmentations_test`` is a non-empty list of ``_target_`` specs, it
    replaces the default list (detlightning extension).
    """
    custom = cfg_get(cfg, "input.augmentations_train" if is_train else "input.augmentations_test")
    if custom:
        return build_augmentation_list(custom)
    if is_train:
        min_size = cfg_get(cfg, "input.min_size_train")
        max_size = cfg_get(cfg, "input.max_size_train")
        sample_style = cfg_get(cfg, "input.min_size_train_sampling")
    else:
        min_size = cfg_get(cfg, "input.min_size_test")
        max_size = cfg_get(cfg, "input.max_size_test")
        sample_style = "choice"
    if isinstance(min_size, (list, tuple)):
        min_size = [int(s) for s in min_size]
    augmentation: list[T.Augmentation] = [T.ResizeShortestEdge(min_size, int(max_size), sample_style)]
    random_flip = cfg_get(cfg, "input.random_flip") if is_train else "none"
    if is_train and random_flip != "none":
        if random_flip not in ("horizontal", "vertical"):
            raise ValueError(f"input.random_flip must be 'none', 'horizontal' or 'vertical', got {random_flip!r}")
        augmentation.append(
            T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    return augmentation


build_transform_gen = build_augmentation
"""Deprecated alias for ``build_augmentation`` (kept for detectron2 code)."""
