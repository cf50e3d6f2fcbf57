"""Flattening rich model inputs/outputs (``list[dict]``, ``Instances``, ``Boxes``) into tuples of tensors for tracing.

``torch.jit.trace`` and the TorchScript-based ONNX exporter only accept a function of tensors returning tensors (or
tuples of them). :func:`flatten_to_tuple` turns a nested object into such a tuple and returns a :class:`Schema`,
a small serialisable dataclass that rebuilds the object from a tuple of the same layout:
``schema(flatten_to_tuple(obj)[0])`` equals ``obj``. :class:`TracingAdapter` applies this to both sides of a model.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..structures import BitMasks, Boxes, Instances, Keypoints, ROIMasks
from ..utils.registry import locate

__all__ = [
    "DictSchema",
    "IdentitySchema",
    "InstancesSchema",
    "ListSchema",
    "Schema",
    "TensorWrapSchema",
    "TracingAdapter",
    "TupleSchema",
    "flat_names",
    "flatten_to_tuple",
    "patch_builtin_len",
    "schema_from_dict",
    "schema_to_dict",
]


@dataclass
class Schema:
    """How to rebuild an object from its flattened tuple; ``schema(values)`` returns the object.

    Subclasses implement ``flatten(obj) -> (tuple, schema)`` (classmethod) and ``__call__(values)``.
    """

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        raise NotImplementedError

    def __call__(self, values: tuple) -> Any:
        raise NotImplementedError

    @staticmethod
    def _concat(parts: list[tuple]) -> tuple[tuple, list[int]]:
        """Join flattened tuples; also return each one's length (to split them again)."""
        out: tuple = ()
        sizes = []
        for part in parts:
            if not isinstance(part, tuple):
                raise TypeError(f"flattened values must be tuples, got {type(part).__name__}")
            out += part
            sizes.append(len(part))
        return out, sizes

    @staticmethod
    def _split(values: tuple | list, sizes: list[int]) -> list[tuple]:
        expected = sum(sizes)
        if len(values) != expected:
            raise ValueError(f"expected {expected} flattened values for this schema, got {len(values)}")
        out = []
        start = 0
        for n in sizes:
            out.append(tuple(values[start : start + n]))
            start += n
        return out


@dataclass
class IdentitySchema(Schema):
    """A leaf (tensor, string, number, None): flattened to a 1-tuple of itself."""

    def __call__(self, values: tuple) -> Any:
        if len(values) != 1:
            raise ValueError(f"IdentitySchema rebuilds one value, got {len(values)}")
        return values[0]

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        return (obj,), cls()


@dataclass
class ListSchema(Schema):
    """A list: its elements' flattened tuples concatenated."""

    schemas: list[Schema] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __call__(self, values: tuple) -> Any:
        parts = self._split(values, self.sizes)
        if len(parts) != len(self.schemas):
            raise ValueError(f"{type(self).__name__}: {len(parts)} parts but {len(self.schemas)} schemas")
        return [schema(part) for schema, part in zip(self.schemas, parts)]

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        flat = [flatten_to_tuple(x) for x in obj]
        values, sizes = cls._concat([v for v, _ in flat])
        return values, cls([s for _, s in flat], sizes)


@dataclass
class TupleSchema(ListSchema):
    """A tuple (rebuilt as a tuple)."""

    def __call__(self, values: tuple) -> Any:
        return tuple(super().__call__(values))


@dataclass
class DictSchema(ListSchema):
    """A mapping with ``str`` keys, flattened in sorted key order (so the layout does not depend on insertion order)."""

    keys: list[str] = field(default_factory=list)

    def __call__(self, values: tuple) -> Any:
        return dict(zip(self.keys, super().__call__(values)))

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        bad = [k for k in obj.keys() if not isinstance(k, str)]
        if bad:
            raise KeyError(f"only dicts with str keys can be flattened; got keys {bad!r}")
        keys = sorted(obj.keys())
        values, schema = ListSchema.flatten([obj[k] for k in keys])
        assert isinstance(schema, ListSchema)
        return values, cls(schema.schemas, schema.sizes, keys)


@dataclass
class InstancesSchema(DictSchema):
    """``Instances``: its fields (as a dict) followed by the image size as a (2,) tensor (height, width)."""

    def __call__(self, values: tuple) -> Any:
        if len(values) < 1:
            raise ValueError("InstancesSchema needs at least the image size")
        image_size = values[-1]
        fields = super().__call__(tuple(values[:-1]))
        return Instances(image_size, **fields)

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        values, schema = super().flatten(obj.get_fields())
        return values + (_size_tensor(obj.image_size),), schema


def _size_tensor(size: Any) -> torch.Tensor:
    """(2,) int64 (height, width). While tracing, the entries of a ``tensor.shape`` are 0-dim tensors: stacking
    keeps them in the graph (``torch.tensor`` would record the example's size as a constant)."""
    if isinstance(size, torch.Tensor):
        return size
    if all(isinstance(s, torch.Tensor) for s in size):
        return torch.stack([s.to(torch.int64) for s in size])
    return torch.tensor([int(s) for s in size], dtype=torch.int64)


def _class_path(klass: type) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"


@dataclass
class TensorWrapSchema(Schema):
    """A class that wraps one tensor as ``.tensor`` and is built as ``cls(tensor)`` (Boxes, BitMasks, ROIMasks,
    Keypoints). The class is stored by its import path, so the schema stays a plain serialisable dataclass."""

    class_name: str = ""

    def __call__(self, values: tuple) -> Any:
        if len(values) != 1:
            raise ValueError(f"TensorWrapSchema({self.class_name}) rebuilds one tensor, got {len(values)}")
        return locate(self.class_name)(values[0])

    @classmethod
    def flatten(cls, obj: Any) -> tuple[tuple, Schema]:
        return (obj.tensor,), cls(_class_path(type(obj)))


# Order matters: the first matching entry wins (e.g. str before any sequence handling).
_SCHEMAS: list[tuple[type | tuple[type, ...], type[Schema]]] = [
    ((str, bytes), IdentitySchema),
    (list, ListSchema),
    (tuple, TupleSchema),
    (Mapping, DictSchema),
    (Instances, InstancesSchema),
    ((Boxes, ROIMasks, BitMasks, Keypoints), TensorWrapSchema),
]


def flatten_to_tuple(obj: Any) -> tuple[tuple, Schema]:
    """Flatten ``obj`` (nested lists / tuples / str-keyed dicts / ``Instances`` / ``Boxes`` / ``BitMasks`` /
    ``ROIMasks`` / ``Keypoints`` / leaves) into a flat tuple.

    Returns:
        ``(values, schema)`` with ``schema(values)`` equal to ``obj``. Leaves (tensors, numbers, strings) are kept
        as they are; for tracing, all of them must be tensors.
    """
    for klass, schema in _SCHEMAS:
        if isinstance(obj, klass):
            return schema.flatten(obj)
    return IdentitySchema.flatten(obj)


# Modules whose ``len(...)`` calls size per-image splits of ROI outputs. Under tracing the builtin ``len`` turns a
# traced size into a Python constant (baking the number of detections of the example input into the graph);
# ``obj.__len__()`` keeps it a traced 0-dim tensor.
_LEN_PATCHED_MODULES = (
    "detlightning.modeling.roi_heads.fast_rcnn",
    "detlightning.modeling.roi_heads.mask_head",
    "detlightning.modeling.roi_heads.keypoint_head",
    "detlightning.modeling.poolers",
)


def _traceable_len(obj: Any) -> Any:
    return obj.__len__() if hasattr(obj, "__len__") else builtins.len(obj)


@contextlib.contextmanager
def patch_builtin_len(modules: tuple[str, ...] | list[str] = (), *, roi_heads: bool = True) -> Iterator[None]:
    """Within the block, ``len(x)`` in the ROI-head modules (``roi_heads=False``: not those) and ``modules`` calls
    ``x.__len__()`` directly, which returns a traced tensor for tensors, ``Boxes`` and ``Instances`` while tracing
    instead of a baked Python int.

    The patch shadows the builtin with a module global and is removed on exit (not thread-safe, like any such
    patch: do not run other inference in those modules concurrently while tracing)."""
    patched = []
    try:
        for name in (*(_LEN_PATCHED_MODULES if roi_heads else ()), *modules):
            module = importlib.import_module(name)
            if "len" in vars(module):
                raise RuntimeError(f"patch_builtin_len: module {name} already defines 'len'")
            module.len = _traceable_len  # type: ignore[attr-defined]
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.len


class TracingAdapter(nn.Module):
    """Wrap ``model`` so that it takes and returns flat tuples of tensors, for ``torch.jit.trace`` / ONNX export.

    Example::

        adapter = TracingAdapter(model, inputs, inference_func)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        flat_outputs = traced(*adapter.flattened_inputs)
        outputs = adapter.outputs_schema(flat_outputs)    # same structure as inference_func(model, *inputs)

    Other inputs with the same structure (e.g. another image of another size) are flattened with
    ``flatten_to_tuple(inputs)[0]`` (or :meth:`flatten_inputs`) and fed to the traced module in the same way.
    """

    flattened_inputs: tuple[torch.Tensor, ...]
    inputs_schema: Schema | None
    outputs_schema: Schema | None

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        inference_func: Callable[..., Any] | None = None,
        allow_non_tensor: bool = False,
    ) -> None:
        """
        Args:
            model: the module to trace (``DistributedDataParallel`` / ``DataParallel`` are unwrapped).
            inputs: one positional argument of ``model``, or a tuple of them (e.g. ``[{"image": tensor}]``, or
                ``(images,)``). Once flattened it must consist of tensors only (unless ``allow_non_tensor``).
            inference_func: ``inference_func(model, *inputs)`` computes the outputs; default ``model(*inputs)``.
            allow_non_tensor: drop non-tensor leaves of the inputs and outputs instead of raising. The schemas are
                then unusable (``None``) and the adapter only runs with exactly ``flattened_inputs`` (e.g. for a
                one-off trace to count flops).
        """
        super().__init__()
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        self.model = model
        # an nn.Module starts in training mode; follow the model's so that exporters that toggle the mode of the
        # adapter (torch.onnx.export restores it afterwards) hand the model back in the mode it came in
        self.train(model.training)
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        self.inputs = inputs
        self.allow_non_tensor = allow_non_tensor
        self.inference_func = inference_func if inference_func is not None else _call_model
        self.outputs_schema = None

        flat, schema = flatten_to_tuple(inputs)
        non_tensor = [type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)]
        if non_tensor and not allow_non_tensor:
            raise ValueError(
                f"TracingAdapter: inputs must flatten to tensors only, found {non_tensor} (e.g. 'height'/'width' "
                f"given as Python ints: pass them as tensors or leave them out); or set allow_non_tensor=True"
            )
        if non_tensor:
            flat = tuple(x for x in flat if isinstance(x, torch.Tensor))
            schema = None
        self.flattened_inputs = flat
        self.inputs_schema = schema

    def flatten_inputs(self, inputs: Any) -> tuple[torch.Tensor, ...]:
        """Flatten new ``inputs`` (same structure as the constructor's) for the traced module."""
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        flat, schema = flatten_to_tuple(inputs)
        if self.inputs_schema is not None and schema != self.inputs_schema:
            raise ValueError(
                "TracingAdapter.flatten_inputs: the inputs have another structure than the ones traced "
                f"(expected {self.inputs_schema}, got {schema})"
            )
        return flat

    def forward(self, *args: torch.Tensor) -> tuple:
        with torch.no_grad(), patch_builtin_len():
            if self.inputs_schema is not None:
                inputs = self.inputs_schema(args)
            else:
                same = len(args) == len(self.flattened_inputs) and all(
                    a is b for a, b in zip(args, self.flattened_inputs)
                )
                if not same:
                    raise ValueError(
                        "TracingAdapter without an inputs schema (allow_non_tensor=True and non-tensor inputs) can "
                        "only run on its own flattened_inputs"
                    )
                inputs = self.inputs
            outputs = self.inference_func(self.model, *inputs)
            flat, schema = flatten_to_tuple(outputs)

            tensors = tuple(x for x in flat if isinstance(x, torch.Tensor))
            if len(tensors) < len(flat):
                if not self.allow_non_tensor:
                    kinds = sorted({type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)})
                    raise ValueError(
                        f"TracingAdapter: the model outputs contain non-tensor values ({kinds}); they cannot be "
                        f"traced (set allow_non_tensor=True to drop them)"
                    )
                self.outputs_schema = None
                return tensors
            if self.outputs_schema is None:
                self.outputs_schema = schema
            elif self.outputs_schema != schema:
                raise ValueError(
                    "TracingAdapter: the model returned outputs of another structure than before; a traced model "
                    f"must always return the same structure (before {self.outputs_schema}, now {schema})"
                )
            return flat

    def _create_wrapper(self, traced_model: Callable[..., tuple]) -> Callable[..., Any]:
        """A function with the original model's input/output structure that runs ``traced_model`` inside."""

        def forward(*args: Any) -> Any:
            flat, _ = flatten_to_tuple(args)
            if self.outputs_schema is None:
                raise RuntimeError("TracingAdapter has no outputs schema: run or trace the adapter first")
            return self.outputs_schema(traced_model(*flat))

        return forward


def _call_model(model: nn.Module, *inputs: Any) -> Any:
    return model(*inputs)


_SCHEMA_CLASSES: dict[str, type[Schema]] = {
    c.__name__: c
    for c in (IdentitySchema, ListSchema, TupleSchema, DictSchema, InstancesSchema, TensorWrapSchema)
}


def schema_to_dict(schema: Schema) -> dict[str, Any]:
    """A JSON-serialisable dict of ``schema`` (nested schemas included); :func:`schema_from_dict` inverts it.

    Exported files store the outputs schema this way, so a loaded model can rebuild ``Instances``."""
    name = type(schema).__name__
    if name not in _SCHEMA_CLASSES:
        raise TypeError(f"schema_to_dict supports {sorted(_SCHEMA_CLASSES)}, got {name}")
    out: dict[str, Any] = {"kind": name}
    if isinstance(schema, ListSchema):
        out["schemas"] = [schema_to_dict(s) for s in schema.schemas]
        out["sizes"] = list(schema.sizes)
    if isinstance(schema, DictSchema):
        out["keys"] = list(schema.keys)
    if isinstance(schema, TensorWrapSchema):
        out["class_name"] = schema.class_name
    return out


def schema_from_dict(data: Mapping[str, Any]) -> Schema:
    """Rebuild a schema written by :func:`schema_to_dict`."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in _SCHEMA_CLASSES:
        raise ValueError(f"not a serialised schema: 'kind' must be one of {sorted(_SCHEMA_CLASSES)}, got {kind!r}")
    cls = _SCHEMA_CLASSES[kind]
    if issubclass(cls, ListSchema):
        schemas = [schema_from_dict(s) for s in data["schemas"]]
        sizes = [int(n) for n in data["sizes"]]
        if issubclass(cls, DictSchema):
            return cls(schemas, sizes, [str(k) for k in data["keys"]])
        return cls(schemas, sizes)
    if cls is TensorWrapSchema:
        return TensorWrapSchema(str(data["class_name"]))
    return cls()


def flat_names(schema: Schema, prefix: str = "") -> list[str]:
    """A readable name for each element of the flattened tuple, e.g. ``0.pred_boxes``, ``0.image_size``
    (list index, dict key, ``image_size`` for the size that ``InstancesSchema`` appends)."""
    if isinstance(schema, ListSchema):
        keys = schema.keys if isinstance(schema, DictSchema) else [str(i) for i in range(len(schema.schemas))]
        names = []
        for key, sub in zip(keys, schema.schemas):
            names += flat_names(sub, f"{prefix}.{key}" if prefix else key)
        if isinstance(schema, InstancesSchema):
            names.append(f"{prefix}.image_size" if prefix else "image_size")
        return names
    return [prefix or "output"]
