"""FLOP and parameter counting for detection models (detectron2's ``utils.analysis``, without fvcore).

    flops = FlopCountAnalysis(model, [{"image": img}])     # img: (3, H, W) tensor; model in eval mode
    flops.total(); flops.by_module()["backbone"]; flops.by_operator()["conv"]
    flop_count_operators(model, [{"image": img}])         # {"conv": 12.3, "addmm": 0.4, ...} in GFLOPs
    print(parameter_count_table(model, max_depth=2))

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` while the model really runs (no tracing), so
models taking ``list[dict]`` inputs, data-dependent control flow and torchvision ops all work. Counting convention:
**one multiply-add is 2 FLOPs** (torch's), so ``nn.Linear(4, 3)`` on a (2, 4) input is 2 * 2 * 4 * 3 = 48 FLOPs.
fvcore, and therefore detectron2's published figures, count a multiply-add as 1 FLOP: halve our numbers to compare
with them. Only the operators torch's counter knows are counted (matrix products and convolutions, which are
nearly all of a detector's compute); element-wise ops, normalisation, pooling, RoIAlign and NMS count as 0.
Operator names are aten's (``"addmm"``, ``"mm"``, ``"bmm"``), except convolutions, which are ``"conv"`` as in fvcore.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter, defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCountAnalysis", "flop_count_operators", "parameter_count", "parameter_count_table"]

logger = logging.getLogger(__name__)

_OP_NAMES = {"convolution": "conv", "_convolution": "conv"}


def _op_name(op: Any) -> str:
    name = str(op)
    name = name.split(".", 1)[1] if name.startswith("aten.") else name
    name = name.split(".", 1)[0]  # overload suffix, e.g. "convolution.default"
    return _OP_NAMES.get(name, name)


class FlopCountAnalysis:
    """FLOPs of one forward pass of ``model`` on ``inputs``, per module and per operator (fvcore's interface).

    Args:
        model: any ``nn.Module``; a detectron2-style model is called as ``model(inputs)`` with its ``list[dict]``.
        inputs: a tuple is unpacked as positional arguments (``model(*inputs)``, fvcore's convention); anything
            else (a ``list[dict]``, a tensor) is passed as the single argument.

    The forward pass runs once, lazily, under ``torch.no_grad()`` in the model's current train/eval mode.
    Counts are ints; module names are ``named_modules()`` names ("" is the whole model).
    """

    def __init__(self, model: nn.Module, inputs: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"FlopCountAnalysis expects an nn.Module, got {type(model).__name__}")
        self._model = model
        self._inputs = inputs
        self._counts: dict[str, Counter[str]] | None = None

    # fvcore's chainable switches; nothing here warns about unsupported ops or uncalled modules
    def unsupported_ops_warnings(self, enabled: bool) -> FlopCountAnalysis:
        """Accepted for fvcore compatibility (no effect); returns self."""
        return self

    def uncalled_modules_warnings(self, enabled: bool) -> FlopCountAnalysis:
        """Accepted for fvcore compatibility (no effect); returns self."""
        return self

    def tracer_warnings(self, mode: str) -> FlopCountAnalysis:
        """Accepted for fvcore compatibility (no tracing happens, so no effect); returns self."""
        return self

    def _run(self) -> dict[str, Counter[str]]:
        if self._counts is not None:
            return self._counts
        args = self._inputs if isinstance(self._inputs, tuple) else (self._inputs,)
        counter = FlopCounterMode(display=False, depth=None)
        with torch.no_grad(), counter:
            self._model(*args)
        root = type(self._model).__name__
        counts: dict[str, Counter[str]] = {name: Counter() for name, _ in self._model.named_modules()}
        for scope, per_op in counter.get_flop_counts().items():
            # the counter names scopes "<RootClass>.<child>.<grandchild>" plus "Global" for everything
            if scope == "Global":
                name = ""
            elif scope == root:
                continue  # the same ops as "Global" (the whole call happens inside the root module)
            elif scope.startswith(root + "."):
                name = scope[len(root) + 1:]
            else:
                logger.debug("FlopCountAnalysis: ignoring counter scope %s", scope)
                continue
            target = counts.setdefault(name, Counter())
            for op, n in per_op.items():
                target[_op_name(op)] += int(n)
        self._counts = counts
        return counts

    def total(self, module_name: str = "") -> int:
        """FLOPs of ``module_name`` ("" = the whole model) and everything it calls."""
        counts = self._run()
        if module_name not in counts:
            raise KeyError(f"FlopCountAnalysis: no module named {module_name!r} in {type(self._model).__name__}")
        return sum(counts[module_name].values())

    def by_operator(self, module_name: str = "") -> Counter[str]:
        """{operator name: FLOPs} within ``module_name`` ("" = the whole model)."""
        counts = self._run()
        if module_name not in counts:
            raise KeyError(f"FlopCountAnalysis: no module named {module_name!r} in {type(self._model).__name__}")
        return Counter(counts[module_name])

    def by_module(self) -> Counter[str]:
        """{module name: FLOPs} for every module ("" = the whole model; a module includes its children;
        modules not called have 0)."""
        return Counter({name: sum(c.values()) for name, c in self._run().items()})

    def by_module_and_operator(self) -> dict[str, Counter[str]]:
        """{module name: {operator name: FLOPs}}."""
        return {name: Counter(c) for name, c in self._run().items()}

    def uncalled_modules(self) -> set[str]:
        """Names of modules that ran no counted operator (fvcore: modules never called)."""
        return {name for name, c in self._run().items() if not c}


def flop_count_operators(model: nn.Module, inputs: Any) -> defaultdict[str, float]:
    """GFLOPs (1e9, 2 per multiply-add) per operator type of one inference pass: ``model`` is put in eval mode for
    the count and restored after. ``inputs``: the model's ``list[dict]`` (detectron2's format)."""
    was_training = model.training
    model.eval()
    try:
        per_op = FlopCountAnalysis(model, inputs).by_operator()
    finally:
        model.train(was_training)
    return defaultdict(float, {op: n / 1e9 for op, n in per_op.items()})


def parameter_count(model: nn.Module) -> defaultdict[str, int]:
    """Number of parameter elements under every name prefix: ``""`` is the total, ``"backbone"`` all of the
    backbone's, ``"backbone.fpn_output2.weight"`` one tensor's. A parameter shared by two modules counts once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"parameter_count expects an nn.Module, got {type(model).__name__}")
    out: defaultdict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        parts = name.split(".")
        for depth in range(len(parts) + 1):
            out[".".join(parts[:depth])] += p.numel()
    return out


def _format_count(n: int) -> str:
    """3 significant digits with a K/M/G suffix: 1234567 -> "1.23M"."""
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= bound:
            return f"{n / bound:.3g}{suffix}"
    return str(n)


def parameter_count_table(model: nn.Module, max_depth: int = 3) -> str:
    """A markdown table of parameter counts per module, nested up to ``max_depth`` name levels; a parameter tensor
    shown in the table gets its shape instead of a count. The first row ("model") is the total."""
    import tabulate

    if max_depth < 0:
        raise ValueError(f"parameter_count_table: max_depth must be >= 0, got {max_depth}")
    counts = parameter_count(model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    children: defaultdict[str, list[str]] = defaultdict(list)
    for name in counts:
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            children[parent].append(name)

    rows = [["model", _format_count(counts[""])]]

    def walk(prefix: str, depth: int) -> None:
        if depth > max_depth:
            return
        for name in children[prefix]:
            value = str(shapes[name]) if name in shapes else _format_count(counts[name])
            rows.append([" " * depth + name, value])
            walk(name, depth + 1)

    walk("", 1)
    # the indentation shows the nesting; tabulate strips it unless told not to: a keyword since tabulate 0.10,
    # a module-level switch before
    headers = ["name", "#elements or shape"]
    if "preserve_whitespace" in inspect.signature(tabulate.tabulate).parameters:
        return tabulate.tabulate(rows, headers=headers, tablefmt="pipe", preserve_whitespace=True)
    before = tabulate.PRESERVE_WHITESPACE
    tabulate.PRESERVE_WHITESPACE = True
    try:
        return tabulate.tabulate(rows, headers=headers, tablefmt="pipe")
    finally:
        tabulate.PRESERVE_WHITESPACE = before
