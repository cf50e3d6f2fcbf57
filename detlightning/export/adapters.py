"""What is traced for each meta-architecture, and how exported outputs become the eager model's ``list[dict]`` again.

Tracing records tensor operations only, so the traced function of a detector stops before the resolution-dependent
post-processing (as detectron2 does for ``GeneralizedRCNN``): it returns the raw per-image ``Instances`` at the
input resolution. :class:`ExportedDetector` (the base of the TorchScript and ONNX runners) applies
``detector_postprocess`` afterwards, with the ``"height"``/``"width"`` of each input, so that its result has the
same form and values as ``model(inputs)`` in eval mode.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..modeling.meta_arch import DenseDetector, GeneralizedRCNN, ProposalNetwork
from ..modeling.postprocessing import detector_postprocess
from ..structures import Instances
from .flatten import Schema, flatten_to_tuple, schema_from_dict, schema_to_dict

__all__ = [
    "ExportedDetector",
    "export_metadata",
    "postprocess_outputs",
    "tracing_inference_func",
    "tracing_inputs",
]

METADATA_KEY = "detlightning_export"
_FORMAT_VERSION = 1


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _rcnn_inference(model: GeneralizedRCNN, inputs: list[dict[str, torch.Tensor]]) -> list[Instances]:
    return model.inference(inputs, do_postprocess=False)  # type: ignore[return-value]


def _proposal_inference(model: ProposalNetwork, inputs: list[dict[str, torch.Tensor]]) -> list[Instances]:
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    return proposals


def _dense_inference(model: DenseDetector, inputs: list[dict[str, torch.Tensor]]) -> list[Instances]:
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    features_list = [features[f] for f in model.head_in_features]
    return model.forward_inference(images, features_list, model.head(features_list))


def tracing_inference_func(model: nn.Module) -> tuple[Callable[..., Any], str]:
    """The function to trace for ``model`` and the key its outputs go under (``"instances"`` / ``"proposals"``).

    The function is ``f(model, batched_inputs) -> list[Instances]`` (raw outputs at the input resolution).

    Raises:
        NotImplementedError: for meta-architectures that cannot be exported (semantic / panoptic segmentation:
            their outputs include per-segment Python dicts, and their post-processing is data-dependent).
    """
    model = _unwrap(model)
    if isinstance(model, GeneralizedRCNN):
        return _rcnn_inference, "instances"
    if isinstance(model, ProposalNetwork):
        return _proposal_inference, "proposals"
    if isinstance(model, DenseDetector):
        return _dense_inference, "instances"
    raise NotImplementedError(
        f"export supports GeneralizedRCNN (Faster/Mask R-CNN), ProposalNetwork and DenseDetector (RetinaNet) "
        f"models; got {type(model).__name__}. Pass inference_func to trace another model through TracingAdapter."
    )


def tracing_inputs(batched_inputs: Sequence[dict[str, Any]], device: torch.device | None = None) -> list[dict]:
    """Only the ``"image"`` of each input (the output size is applied after the traced graph), on ``device``."""
    if not isinstance(batched_inputs, (list, tuple)) or len(batched_inputs) == 0:
        raise TypeError(
            f"export expects a non-empty list of dicts with an 'image' (C, H, W) tensor, got {type(batched_inputs)}"
        )
    out = []
    for i, x in enumerate(batched_inputs):
        if not isinstance(x, dict) or "image" not in x:
            keys = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(f"export: batched_inputs[{i}] must be a dict with an 'image' tensor, got {keys}")
        image = x["image"]
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(
                f"export: batched_inputs[{i}]['image'] must be a (C, H, W) tensor, got "
                f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
            )
        out.append({"image": image.to(device) if device is not None else image})
    return out


def _int_size(size: Any) -> tuple[int, int]:
    if isinstance(size, torch.Tensor):
        size = size.tolist()
    return int(size[0]), int(size[1])


def postprocess_outputs(
    outputs: Sequence[Instances], batched_inputs: Sequence[dict[str, Any]], output_key: str = "instances"
) -> list[dict[str, Instances]]:
    """Rescale raw per-image outputs (e.g. of a traced model) to each input's ``"height"``/``"width"``, exactly
    as the eager model does (``detector_postprocess``: boxes scaled and clipped, masks pasted, keypoints scaled).

    Args:
        outputs: per image ``Instances`` at the input resolution (``image_size`` may be a (2,) tensor).
        batched_inputs: the model inputs; ``"height"``/``"width"`` default to the image size.
        output_key: ``"instances"`` (detectors) or ``"proposals"`` (``ProposalNetwork``).
    Returns:
        per image ``{output_key: Instances}`` at the output resolution.
    """
    if len(outputs) != len(batched_inputs):
        raise ValueError(f"postprocess_outputs: {len(outputs)} outputs for {len(batched_inputs)} inputs")
    results = []
    for inst, inp in zip(outputs, batched_inputs):
        image_size = _int_size(inst.image_size)
        # Python ints, as in eager mode, so that the scale factors are computed exactly the same way
        inst = Instances(image_size, **inst.get_fields())
        height = int(inp.get("height", image_size[0]))
        width = int(inp.get("width", image_size[1]))
        results.append({output_key: detector_postprocess(inst, height, width)})
    return results


def export_metadata(model: nn.Module, outputs_schema: Schema, output_key: str, num_images: int) -> str:
    """The JSON stored with an exported model: how to rebuild its outputs and what it expects."""
    model = _unwrap(model)
    return json.dumps(
        {
            "format_version": _FORMAT_VERSION,
            "meta_architecture": type(model).__name__,
            "input_format": getattr(model, "input_format", None),
            "num_images": num_images,
            "output_key": output_key,
            "outputs_schema": schema_to_dict(outputs_schema),
        }
    )


class ExportedDetector:
    """An exported detector behind the eager model's interface: ``detector(batched_inputs) -> list[dict]``.

    Subclasses implement :meth:`run_flat` (flat tuple of input tensors -> flat tuple of output tensors).
    """

    def __init__(self, metadata: str | dict[str, Any], source: str = "exported model") -> None:
        meta = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
        if meta.get("format_version") != _FORMAT_VERSION or "outputs_schema" not in meta:
            raise ValueError(
                f"{source}: not a detlightning export (metadata {METADATA_KEY!r} with format_version "
                f"{_FORMAT_VERSION} expected, got {sorted(meta)})"
            )
        self.metadata = meta
        self.source = source
        self.outputs_schema = schema_from_dict(meta["outputs_schema"])
        self.output_key: str = meta["output_key"]
        self.num_images: int = int(meta["num_images"])
        self.input_format: str | None = meta.get("input_format")

    def run_flat(self, flat_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def raw_outputs(self, batched_inputs: Sequence[dict[str, Any]]) -> list[Instances]:
        """Per image ``Instances`` at the input resolution (what the exported graph computes)."""
        inputs = tracing_inputs(batched_inputs)
        if len(inputs) != self.num_images:
            raise ValueError(
                f"{self.source} was exported for batches of {self.num_images} image(s) (tracing fixes the batch "
                f"size), got {len(inputs)}"
            )
        flat, _ = flatten_to_tuple((inputs,))
        return self.outputs_schema(tuple(self.run_flat(flat)))

    def __call__(self, batched_inputs: Sequence[dict[str, Any]]) -> list[dict[str, Instances]]:
        """Same inputs and outputs as the eager model in eval mode (``"image"``, optional ``"height"``/``"width"``)."""
        return postprocess_outputs(self.raw_outputs(batched_inputs), batched_inputs, self.output_key)
