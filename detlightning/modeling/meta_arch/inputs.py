"""Checks and preparation of detectron2's ``list[dict]`` model inputs, shared by the meta-architectures: clear
errors naming the offending input, key, shape or dtype; images moved to the model's device and normalised."""
from __future__ import annotations

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


def check_batched_inputs(batched_inputs: Any, owner: str) -> None:
    if not isinstance(batched_inputs, (list, tuple)) or len(batched_inputs) == 0:
        raise TypeError(
            f"{owner} expects a non-empty list of dicts (one per image, with an 'image' key), got "
            f"{type(batched_inputs).__name__}" + ("" if batched_inputs else " (empty)")
        )
    for i, x in enumerate(batched_inputs):
        if not isinstance(x, dict):
            raise TypeError(f"{owner}: batched_inputs[{i}] must be a dict, got {type(x).__name__}")


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
