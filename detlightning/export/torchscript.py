"""TorchScript export by tracing: ``export_torchscript`` writes a ``.pt`` file, ``load_torchscript`` runs it.

The file is a regular ``torch.jit`` archive: ``torch.jit.load(path)(*flat_images)`` returns the flat tuple of output
tensors. It also holds, as an extra file, the schema that rebuilds ``Instances`` from that tuple, so
``load_torchscript(path)(batched_inputs)`` returns the same ``list[dict]`` as the eager model.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import METADATA_KEY, ExportedDetector, export_metadata, tracing_inference_func, tracing_inputs
from .flatten import TracingAdapter
from .torchscript_patch import freeze_training_mode, patch_instances

__all__ = ["TorchScriptDetector", "export_torchscript", "load_torchscript", "scripting_with_instances", "trace_model"]

_EXTRA_FILE = f"{METADATA_KEY}.json"


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def trace_model(
    model: nn.Module,
    batched_inputs: Sequence[dict[str, Any]],
    inference_func: Callable[..., Any] | None = None,
    quiet: bool = True,
) -> tuple[torch.jit.ScriptModule, TracingAdapter, str]:
    """Trace ``model`` (eval mode) on ``batched_inputs`` through a :class:`TracingAdapter`.

    Args:
        model: a ``GeneralizedRCNN`` / ``ProposalNetwork`` / ``DenseDetector``; put into eval mode.
        batched_inputs: example inputs (only ``"image"`` is used); their number fixes the batch size of the trace.
        inference_func: ``f(model, batched_inputs)`` to trace instead of the default of the architecture.
        quiet: hide ``torch.jit.TracerWarning``s. The model's remaining ones come from input checks that compare
            shapes (harmless: the checked property does not change between inputs of one exported model).
    Returns:
        (traced module, the adapter with ``outputs_schema``, output key)
    """
    model.eval()
    default_func, output_key = tracing_inference_func(model) if inference_func is None else (None, "instances")
    func = inference_func or default_func
    inputs = tracing_inputs(batched_inputs, _model_device(model))
    adapter = TracingAdapter(model, inputs, func)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.(trace|script).* is deprecated")
        # check_trace re-runs the trace and compares graphs; NMS / nonzero make that comparison meaningless
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    if adapter.outputs_schema is None:
        raise RuntimeError("tracing produced no outputs schema")
    return traced, adapter, output_key


def scripting_with_instances(model: nn.Module, fields: dict[str, type]) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` for an eval-mode model whose code builds or reads ``Instances``.

    ``fields`` names every ``Instances`` field the model touches and its type, e.g.
    ``{"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}``; inside the scripted model
    ``Instances`` is a class with exactly these (optional) fields. ``training`` is compiled as a constant.
    torch.jit is deprecated upstream; its deprecation warnings pass through.
    """
    if model.training:
        raise ValueError("scripting_with_instances: call model.eval() first (only inference code is scripted)")
    with freeze_training_mode(model), patch_instances(fields):
        return torch.jit.script(model)


def export_torchscript(
    model: nn.Module,
    batched_inputs: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    inference_func: Callable[..., Any] | None = None,
) -> str:
    """Trace ``model`` on ``batched_inputs`` and save the TorchScript module to ``path``.

    For ``GeneralizedRCNN`` the traced function is ``model.inference(inputs, do_postprocess=False)`` (raw outputs
    at the input resolution); :func:`load_torchscript` applies the post-processing. The traced graph works for
    other image sizes, but the batch size, the device and the model's configuration are fixed.

    Returns:
        ``path`` as a string.
    """
    traced, adapter, output_key = trace_model(model, batched_inputs, inference_func)
    assert adapter.outputs_schema is not None
    meta = export_metadata(model, adapter.outputs_schema, output_key, len(adapter.flattened_inputs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path), _extra_files={_EXTRA_FILE: meta})
    return str(path)


class TorchScriptDetector(ExportedDetector):
    """A saved TorchScript export behind the eager interface: ``detector(batched_inputs) -> list[dict]``."""

    def __init__(self, path: str | os.PathLike, map_location: str | torch.device | None = None) -> None:
        extra = {_EXTRA_FILE: ""}
        if not Path(path).is_file():
            raise FileNotFoundError(f"TorchScript file not found: {path}")
        self.module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
        if not extra[_EXTRA_FILE]:
            raise ValueError(
                f"{path}: no {_EXTRA_FILE} inside; it was not written by detlightning.export.export_torchscript "
                "(torch.jit.load it and rebuild the outputs yourself)"
            )
        meta = extra[_EXTRA_FILE]
        super().__init__(meta.decode() if isinstance(meta, bytes) else meta, source=str(path))
        self.device = torch.device(map_location) if map_location is not None else None

    def run_flat(self, flat_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.device is not None:
            flat_inputs = tuple(t.to(self.device) for t in flat_inputs)
        with torch.no_grad():
            out = self.module(*flat_inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def load_torchscript(path: str | os.PathLike, map_location: str | torch.device | None = None) -> TorchScriptDetector:
    """Load a file written by :func:`export_torchscript`; call the result like the eager model."""
    return TorchScriptDetector(path, map_location)
