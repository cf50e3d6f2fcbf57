"""The opt-in fast inference path: bf16 / fp16 arithmetic and ``torch.compile``.

Both change the arithmetic, so outputs move a little from the fp32 model's (``scripts/benchmark.py fast`` reports
how far on detectron2-format weights); the default path stays fp32 eager and detectron2-exact. Selected from config
by ``test.precision`` (``fp32`` | ``bf16`` | ``fp16``) and ``model.compile`` (``true``), honoured by
``DefaultPredictor`` and the evaluation loop; in your own code, once after loading the weights::

    set_inference_precision(model, "bf16")
    compile_for_inference(model)

Only the dense parts (backbone, the convolution / fully connected stacks of the heads) run in low precision, under
``torch.autocast``, and hand fp32 tensors on: scores, box decoding, NMS, mask probabilities and paste-back stay in
fp32. Plain PyTorch, like the rest of ``modeling``; parameter names and checkpoints are unchanged.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PRECISIONS", "set_inference_precision", "compile_for_inference", "cpu_has_fast_bf16"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# (submodule, method): the parts that hold nearly all the arithmetic. For the mask / keypoint / semantic heads only
# ``layers`` (their network): their ``forward`` also turns logits into probabilities, which stays in fp32.
_DENSE_PARTS = (
    ("backbone", "forward"),
    ("proposal_generator.rpn_head", "forward"),
    ("roi_heads.box_head", "forward"),
    ("roi_heads.mask_head", "layers"),
    ("roi_heads.keypoint_head", "layers"),
    ("head", "forward"),  # RetinaNet / FCOS
    ("sem_seg_head", "layers"),
)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.state_dict().values()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _dense_parts(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, method)`` of each dense part ``model`` has (Cascade R-CNN: one box head per stage)."""
    parts = []
    for path, method in _DENSE_PARTS:
        try:
            part = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(part, nn.ModuleList):
            parts += [(f"{path}.{i}", stage, method) for i, stage in enumerate(part)]
        elif callable(getattr(type(part), method, None)):
            parts.append((path, part, method))
    return parts


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value


class _LowPrecisionMethod:
    """Replaces one method of one module (an instance attribute): in eval mode it runs under ``torch.autocast`` and
    returns fp32 tensors; in training mode it is the plain method. A class rather than a closure so that a
    ``copy.deepcopy`` of the model points at the copied module."""

    def __init__(self, module: nn.Module, method: str, device_type: str, dtype: torch.dtype) -> None:
        self.module = module
        self.method = method
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plain = getattr(type(self.module), self.method)
        if self.module.training:
            return plain(self.module, *args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = plain(self.module, *args, **kwargs)
        return _to_fp32(out)


def set_inference_precision(model: nn.Module, precision: str) -> nn.Module:
    """Make ``model``'s dense parts compute in ``precision`` at inference (eval mode), in place; returns ``model``.

    ``"fp32"`` restores the plain model. ``"bf16"`` is fast on GPUs and on CPUs with AVX512-BF16/AMX; ``"fp16"`` is
    for GPUs. Training-mode calls are not affected (use the trainer's precision for mixed-precision training).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"test.precision must be one of {PRECISIONS}, got {precision!r}")
    device = _device_of(model)
    if precision != "fp32":
        if device.type == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
            logger.warning("test.precision=bf16 on a CPU without AVX512-BF16/AMX: it runs, but slower than fp32")
        if device.type == "cpu" and precision == "fp16":
            logger.warning("test.precision=fp16 on the CPU is emulated and slow; bf16 is the CPU's fast precision")
    for _, part, method in _dense_parts(model):
        part.__dict__.pop(method, None)  # back to the class's method
        if precision != "fp32":
            setattr(part, method, _LowPrecisionMethod(part, method, device.type, _DTYPES[precision]))
    return model


def compile_for_inference(model: nn.Module, *, freezing: bool | None = None, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model``'s dense parts in place with ``torch.compile`` (``nn.Module.compile``: parameter names and
    checkpoints are unchanged) and return ``model``.

    On the CPU inductor runs with ``freezing`` (weights folded into the compiled graph as constants, convolutions
    pre-packed for oneDNN): inference only, in eval mode, and a later change of the weights is not seen. On CUDA the
    default inductor is used. The first call at each new input size compiles (tens of seconds on a CPU); batch
    sizes and image sizes are made dynamic after the first recompile.
    """
    if model.training:
        raise ValueError("compile_for_inference compiles for inference: call model.eval() first")
    device = _device_of(model)
    if freezing is None:
        freezing = device.type == "cpu"
    options = dict(compile_kwargs.pop("options", {}) or {})
    if freezing and compile_kwargs.get("backend", "inductor") == "inductor":
        options.setdefault("freezing", True)
    for path, part, _ in _dense_parts(model):
        part.compile(options=options or None, **compile_kwargs)
        logger.info("compile_for_inference: %s compiled (%s)", path, ", ".join(f"{k}={v}" for k, v in options.items()))
    return model
