"""``torch.export`` of the R-CNN family (and RPN / RetinaNet): an ``ExportedProgram`` with the eager interface.

detectron2 has no ``torch.export`` path; this one reuses the tracing path's pieces: the same traced function
(``model.inference(inputs, do_postprocess=False)`` for R-CNN), flattened by :class:`TracingAdapter`, exported with
``torch.export.export`` (non-strict), and post-processed in Python afterwards like the TorchScript and ONNX runners.
The number of detections is data-dependent (NMS, score filtering): the program carries it as an unbacked size;
the image size is fixed (see :func:`export_model`).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import METADATA_KEY, ExportedDetector, export_metadata, tracing_inference_func, tracing_inputs
from .flatten import TracingAdapter, patch_builtin_len

__all__ = ["ExportedProgramDetector", "export_model", "load_exported_model"]

_EXTRA_FILE = f"{METADATA_KEY}.json"
# Besides the ROI-head modules TracingAdapter patches: Instances.set checks field lengths with len(), which
# cannot be evaluated for a data-dependent number of detections.
_EXPORT_LEN_MODULES = ("detlightning.structures.instances",)


def _sizes_stay_symbolic() -> contextlib.AbstractContextManager:
    """``len()`` in :data:`_EXPORT_LEN_MODULES` keeps sizes symbolic (TracingAdapter patches the ROI heads itself)."""
    return patch_builtin_len(_EXPORT_LEN_MODULES, roi_heads=False)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


class ExportedProgramDetector(ExportedDetector):
    """An exported program behind the eager interface: ``detector(batched_inputs) -> list[dict]``.

    ``program`` is the ``torch.export.ExportedProgram`` (flat image tensors in, flat output tensors out);
    :meth:`save` writes it with its metadata (``torch.export.save``).
    """

    def __init__(self, program: torch.export.ExportedProgram, metadata: str, source: str = "exported program"):
        super().__init__(metadata, source=source)
        self.program = program
        self._module = program.module()

    def run_flat(self, flat_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        expected = self.metadata.get("input_shapes")
        got = [list(t.shape) for t in flat_inputs]
        if expected is not None and got != expected:
            raise ValueError(
                f"{self.source} was exported for image tensors of shapes {expected}, got {got}: torch.export fixes "
                "the image size here; export once per input size"
            )
        with torch.no_grad():
            out = self._module(*flat_inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def save(self, path: str | os.PathLike) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(self.program, str(path), extra_files={_EXTRA_FILE: json.dumps(self.metadata)})
        return str(path)


def export_model(
    model: nn.Module,
    batched_inputs: Sequence[dict[str, Any]],
    inference_func: Callable[..., Any] | None = None,
) -> ExportedProgramDetector:
    """``torch.export`` an eval-mode detector on example inputs (``[{"image": (3, H, W) tensor}, ...]``).

    The program fixes the batch size, the image sizes and dtype of the examples, the device and the config; the
    number of detections stays data-dependent. Inputs of other sizes raise ``ValueError``: export once per size
    (symbolic image sizes are not supported yet: RPN's per-level top-k and the clipping sizes specialize them).

    Args:
        model: ``GeneralizedRCNN`` (Faster / Mask / Cascade R-CNN), ``ProposalNetwork`` or ``DenseDetector``.
        batched_inputs: example inputs; only ``"image"`` is used (``"height"``/``"width"`` apply when running).
        inference_func: ``f(model, batched_inputs) -> list[Instances]`` instead of the architecture's default.
    Returns:
        a callable with the eager model's interface and values; ``.program`` is the ``ExportedProgram``.
    """
    model.eval()
    default_func, output_key = tracing_inference_func(model) if inference_func is None else (None, "instances")
    inputs = tracing_inputs(batched_inputs, _model_device(model))
    adapter = TracingAdapter(model, inputs, inference_func or default_func)
    with _sizes_stay_symbolic():
        program = torch.export.export(adapter, adapter.flattened_inputs, strict=False)
    if adapter.outputs_schema is None:
        # export traces a functionalized copy, whose attribute writes do not reach the adapter: one eager call
        # records how the outputs are structured
        adapter(*adapter.flattened_inputs)
    assert adapter.outputs_schema is not None
    meta = json.loads(export_metadata(model, adapter.outputs_schema, output_key, len(adapter.flattened_inputs)))
    meta["input_shapes"] = [list(t.shape) for t in adapter.flattened_inputs]
    return ExportedProgramDetector(program, json.dumps(meta))


def load_exported_model(path: str | os.PathLike) -> ExportedProgramDetector:
    """Load a file written by ``export_model(...).save(path)``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported program not found: {path}")
    extra = {_EXTRA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    if not extra[_EXTRA_FILE]:
        raise ValueError(f"{path}: no {_EXTRA_FILE} inside; it was not saved by ExportedProgramDetector.save")
    return ExportedProgramDetector(program, extra[_EXTRA_FILE], source=str(path))
