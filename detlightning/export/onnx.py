"""ONNX export (TorchScript-based exporter, through :class:`TracingAdapter`) and an onnxruntime runner.

``export_onnx`` needs the ``onnx`` package; running the file needs ``onnxruntime``
(``pip install "detlightning[export]"``). ROIAlign and NMS are exported through the ONNX symbolics that torchvision
registers (``RoiAlign`` and ``NonMaxSuppression``), which is why the TorchScript-based exporter (``dynamo=False``) is
used: it follows the same trace as :func:`export_torchscript`, data-dependent shapes included.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modeling.meta_arch import GeneralizedRCNN
from .adapters import (
    METADATA_KEY,
    ExportedDetector,
    _unwrap,
    export_metadata,
    tracing_inference_func,
    tracing_inputs,
)
from .flatten import TracingAdapter, flat_names
from .torchscript import _model_device

__all__ = ["DEFAULT_OPSET", "ONNXRuntimeDetector", "export_onnx", "load_onnx"]

# RoiAlign with coordinate_transformation_mode ("aligned", ROIAlignV2) needs opset >= 16
DEFAULT_OPSET = 17


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs the '{module}' package: pip install onnx onnxruntime (or detlightning[export])"
        ) from e


def export_onnx(
    model: nn.Module,
    batched_inputs: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    inference_func: Callable[..., Any] | None = None,
) -> str:
    """Export ``model`` (eval mode) to an ONNX file, traced on ``batched_inputs``.

    The graph inputs are the images (``image`` or ``image_0``, ``image_1``, ... for several), (C, H, W) in the
    model's input format and dtype, with dynamic height and width. The outputs are the flattened raw
    per-image ``Instances`` (names like ``0.pred_boxes``, ``0.scores``, ``0.pred_classes``, ``0.pred_masks``,
    ``0.image_size``), with a dynamic number of detections. The schema to rebuild them is stored in the model's
    metadata (key ``detlightning_export``); :func:`load_onnx` uses it.

    Args:
        opset: ONNX opset version (>= 16 for ROIAlignV2).
    Returns:
        ``path`` as a string.
    """
    onnx = _require("onnx", "export_onnx")
    if opset < 16:
        raise ValueError(f"export_onnx: opset must be >= 16 (RoiAlign with aligned=True), got {opset}")
    inner = _unwrap(model)
    if isinstance(inner, GeneralizedRCNN) and getattr(inner.roi_heads, "keypoint_on", False):
        raise NotImplementedError(
            "export_onnx: keypoint heads cannot be exported to ONNX (the heatmap decoding loops over ROIs with "
            "per-ROI output sizes, which the ONNX exporter cannot convert); use export_torchscript for Keypoint R-CNN"
        )
    model.eval()
    default_func, output_key = tracing_inference_func(model) if inference_func is None else (None, "instances")
    inputs = tracing_inputs(batched_inputs, _model_device(model))
    adapter = TracingAdapter(model, inputs, inference_func or default_func)

    # Run once to learn the outputs schema (names and dynamic axes of the outputs).
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)
    assert adapter.outputs_schema is not None
    n = len(adapter.flattened_inputs)
    input_names = ["image"] if n == 1 else [f"image_{i}" for i in range(n)]
    output_names = flat_names(adapter.outputs_schema)
    dynamic_axes: dict[str, dict[int, str]] = {
        name: {1: f"{name}_height", 2: f"{name}_width"} for name in input_names
    }
    for name in output_names:
        if not name.endswith("image_size"):
            image_idx = name.split(".", 1)[0]
            dynamic_axes[name] = {0: f"num_{image_idx}"}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(trace|script).* is deprecated")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = export_metadata(model, adapter.outputs_schema, output_key, n)
    onnx.save(proto, str(path))
    return str(path)


class ONNXRuntimeDetector(ExportedDetector):
    """An ONNX file written by :func:`export_onnx`, run with onnxruntime behind the eager interface:
    ``detector(batched_inputs) -> list[dict]`` (``"image"`` tensors, optional ``"height"``/``"width"``)."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        ort = _require("onnxruntime", "running an ONNX export")
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(
                f"{path}: no {METADATA_KEY!r} metadata; it was not written by detlightning.export.export_onnx"
            )
        super().__init__(meta[METADATA_KEY], source=str(path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_flat(self, flat_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if len(flat_inputs) != len(self.input_names):
            raise ValueError(f"{self.source} takes {len(self.input_names)} images, got {len(flat_inputs)}")
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, flat_inputs)}
        outputs = self.session.run(self.output_names, feed)
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outputs)


def load_onnx(path: str | os.PathLike, providers: Sequence[str] | None = None) -> ONNXRuntimeDetector:
    """An onnxruntime session for a file written by :func:`export_onnx`; call it like the eager model."""
    return ONNXRuntimeDetector(path, providers)
