"""Checks and preparation of detectron2's ``list[dict]`` model inputs, shared by the meta-architectures: clear
errors naming the offending input, key, shape or dtype; images moved to the model's device and normalised."""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...layers import move_device_like
from ...structures import Instances
from ...utils.events import EventStorageError, has_event_storage

__all__ = [
    "check_batched_inputs",
    "collect_gt_instances",
    "normalize_images",
    "output_sizes",
    "register_pixel_stats",
    "require_key",
    "require_storage",
]


_warned_unit_range = False  # the [0, 1]-float-image warning is given once per process


def check_batched_inputs(batched_inputs: Any, owner: str) -> None:
    """The entry check of every meta-architecture: a non-empty list of dicts whose ``"image"`` (when given) is a
    non-empty (C, H, W) tensor of finite values and whose ``"height"``/``"width"`` (when given) are positive
    numbers. Errors name the input index and the field; a float image whose max is <= 1 (probably scaled to
    [0, 1], while the models expect 0-255 pixels) gives one warning."""
    if not isinstance(batched_inputs, (list, tuple)) or len(batched_inputs) == 0:
        raise TypeError(
            f"{owner} expects a non-empty list of dicts (one per image, with an 'image' key), got "
            f"{type(batched_inputs).__name__}" + ("" if batched_inputs else " (empty)")
        )
    for i, x in enumerate(batched_inputs):
        if not isinstance(x, dict):
            raise TypeError(f"{owner}: batched_inputs[{i}] must be a dict, got {type(x).__name__}")
        for key in ("height", "width"):
            if key in x:
                _check_output_size(x[key], f"{owner}: batched_inputs[{i}][{key!r}]")
        img = x.get("image")
        if isinstance(img, torch.Tensor):
            _check_image(img, f"{owner}: batched_inputs[{i}]['image']")


def _check_output_size(value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor):  # traced/exported graphs pass sizes as tensors
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must be a positive int (the output size in pixels), got {type(value).__name__} "
                         f"{value!r}")
    if not value > 0:
        raise ValueError(f"{where} must be a positive int (the output size in pixels), got {value!r}")


def _check_image(img: torch.Tensor, where: str) -> None:
    """Shape (C, H, W) with C, H, W > 0; finite values for float images (one reduction, one device sync)."""
    if img.dim() != 3:
        raise ValueError(f"{where} must have shape (C, H, W), got {tuple(img.shape)}")
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return  # shapes may be symbolic and values are not known while tracing/exporting
    if img.numel() == 0:
        raise ValueError(f"{where} is empty: shape {tuple(img.shape)} (C, H, W); every side must be > 0")
    if not img.is_floating_point():
        return
    lo, hi = torch.stack([img.amin(), img.amax()]).float().tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(img)).sum())
        raise ValueError(f"{where} has {bad} NaN/inf pixel value(s) (shape {tuple(img.shape)}); images must be finite")
    global _warned_unit_range
    if hi <= 1.0 and not _warned_unit_range:
        _warned_unit_range = True
        warnings.warn(
            f"{where} is a float image with max {hi:.3g} <= 1: it looks scaled to [0, 1], but the model expects "
            f"0-255 pixel values (its pixel_mean/pixel_std are in that range); multiply by 255 (warned once)",
            stacklevel=3,
        )


def require_storage(owner: str) -> None:
    if not has_event_storage():
        raise EventStorageError(
            f"{owner} in training mode logs metrics to an EventStorage: run the training step inside "
            f"'with EventStorage(start_iter):' (detlightning.utils.events), or call model.eval() for inference"
        )


def require_key(batched_inputs: Sequence[dict], key: str, owner: str, why: str) -> None:
    for i, x in enumerate(batched_inputs):
        if key not in x:
            raise KeyError(f"{owner}: batched_inputs[{i}] has no {key!r} ({why}); its keys are {sorted(x)}")


def collect_gt_instances(
    batched_inputs: Sequence[dict], fields: Sequence[str], device: torch.device, owner: str
) -> list:
    """The ``"instances"`` of every input, checked for ``fields`` and moved to ``device``."""
    require_key(batched_inputs, "instances", owner, "training needs the ground truth")
    out = []
    for i, x in enumerate(batched_inputs):
        inst = x["instances"]
        if not isinstance(inst, Instances):
            raise TypeError(f"{owner}: batched_inputs[{i}]['instances'] must be Instances, got {type(inst).__name__}")
        for field in fields:
            if not inst.has(field):
                raise ValueError(
                    f"{owner}: batched_inputs[{i}]['instances'] has no field {field!r} needed for training; its "
                    f"fields are {list(inst.get_fields())}"
                )
        out.append(inst.to(device))
    return out


def normalize_images(
    batched_inputs: Sequence[dict], pixel_mean: torch.Tensor, pixel_std: torch.Tensor, owner: str
) -> list[torch.Tensor]:
    """Validate each ``"image"``, move it to the model's device and normalise ``(x - mean) / std``."""
    num_channels = pixel_mean.shape[0]
    images = []
    for i, x in enumerate(batched_inputs):
        if "image" not in x:
            raise KeyError(f"{owner}: batched_inputs[{i}] has no 'image'; its keys are {sorted(x)}")
        img = x["image"]
        if not isinstance(img, torch.Tensor):
            raise TypeError(
                f"{owner}: batched_inputs[{i}]['image'] must be a torch.Tensor (C, H, W), got {type(img).__name__}"
            )
        if img.dim() != 3:
            raise ValueError(
                f"{owner}: batched_inputs[{i}]['image'] must have shape (C, H, W), got {tuple(img.shape)}"
            )
        if img.shape[0] != num_channels:
            raise ValueError(
                f"{owner}: batched_inputs[{i}]['image'] has {img.shape[0]} channels but pixel_mean has "
                f"{num_channels} (image shape {tuple(img.shape)}; images are (C, H, W), channels first)"
            )
        if img.dtype == torch.bool or img.dtype.is_complex:
            raise TypeError(f"{owner}: batched_inputs[{i}]['image'] has dtype {img.dtype}; expected uint8 or float")
        # d2-parity: the image follows the model to its device; uint8 is promoted to float by the arithmetic.
        img = move_device_like(img, pixel_mean)
        img = (img - pixel_mean) / pixel_std
        if img.dtype != pixel_mean.dtype:
            # e.g. a float64 image: detectron2 would fail later in the first conv; the model's dtype is meant
            img = img.to(pixel_mean.dtype)
        images.append(img)
    return images


def _pixel_buffer(values: Sequence[float], name: str) -> torch.Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty list of per-channel values, got {list(values)}")
    return t.view(-1, 1, 1)


def register_pixel_stats(
    module: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float], owner: str
) -> None:
    """Give ``module`` the (C, 1, 1) float32 buffers ``pixel_mean`` and ``pixel_std`` used by
    :func:`normalize_images`, after checking that both have one value per input channel."""
    mean, std = _pixel_buffer(pixel_mean, "pixel_mean"), _pixel_buffer(pixel_std, "pixel_std")
    if mean.shape != std.shape:
        raise ValueError(
            f"{owner}: pixel_mean ({mean.numel()} values) and pixel_std ({std.numel()} values) must have one value "
            f"per input channel each"
        )
    # d2-parity: non-persistent, so neither detectron2 checkpoints nor ours hold them (they come from the config).
    module.register_buffer("pixel_mean", mean, persistent=False)
    module.register_buffer("pixel_std", std, persistent=False)


def output_sizes(batched_inputs: Sequence[dict], image_sizes: Sequence[tuple[int, int]]) -> list[tuple[Any, Any]]:
    """Per image, the (height, width) its outputs are rescaled to: the input's ``"height"``/``"width"`` when given,
    else the size the network saw."""
    return [(x.get("height", size[0]), x.get("width", size[1])) for x, size in zip(batched_inputs, image_sizes)]
