"""Scripting models that pass ``Instances`` around (detectron2's ``export/torchscript_patch.py``).

``Instances`` holds arbitrary named fields, which TorchScript cannot type. :func:`patch_instances` writes a
statically typed stand-in class for a given ``{field name: type}`` (every field optional, read and written as
attributes, with ``__len__``, ``has``, ``to`` and ``__getitem__``), and while the context is open TorchScript
compiles that class wherever code mentions ``Instances``. :func:`freeze_training_mode` marks ``training`` as a
constant so the training branches of every submodule are compiled away.
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..structures import Instances

__all__ = ["freeze_training_mode", "patch_instances"]

_class_ids = itertools.count(1)


def _clear_jit_cache() -> None:
    """Forget compiled modules and functions: they may refer to an earlier stand-in for ``Instances``."""
    from torch.jit._recursive import concrete_type_store
    from torch.jit._state import _jit_caching_layer

    concrete_type_store.type_store.clear()
    _jit_caching_layer.clear()




def _class_source(cls_name: str, fields: Mapping[str, type]) -> str:
    """Python source of the typed stand-in class (TorchScript compiles classes from their source file)."""
    for name in fields:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"patch_instances: field names must be public identifiers, got {name!r}")
    # each field type is imported under an alias of its own (TorchScript resolves plain names only)
    aliases: dict[type, str] = {}
    out = ["from typing import Optional, Tuple", "import torch"]
    for t in fields.values():
        if not isinstance(t, type) or "." in t.__qualname__:
            raise TypeError(f"patch_instances: field types must be module-level classes (Tensor, Boxes...), got {t!r}")
        if t not in aliases:
            aliases[t] = f"_FieldType{len(aliases)}"
            out.append(f"from {t.__module__} import {t.__qualname__} as {aliases[t]}")
    out += ["", "", f"class {cls_name}:"]

    def _annotation(t: type) -> str:
        return aliases[t]

    out += [
        "    def __init__(self, image_size: Tuple[int, int]):",
        "        self.image_size = image_size",
        f"        self._field_names = {tuple(fields)!r}",
    ]
    out += [f"        self._{n} = torch.jit.annotate(Optional[{_annotation(t)}], None)" for n, t in fields.items()]
    for n, t in fields.items():
        ann = _annotation(t)
        out += [
            "",
            "    @property",
            f"    def {n}(self) -> {ann}:",
            f"        value = self._{n}",  # a local, so that TorchScript refines Optional[T] to T
            f"        assert value is not None, 'field {n} is not set'",
            "        return value",
            "",
            f"    @{n}.setter",
            f"    def {n}(self, value: {ann}) -> None:",
            f"        self._{n} = value",
        ]
    out += ["", "    def __len__(self) -> int:"]
    for n in fields:
        out += [f"        value_{n} = self._{n}", f"        if value_{n} is not None:"]
        out += [f"            return len(value_{n})"]
    out += ["        raise NotImplementedError('len() of an Instances without fields')"]
    out += ["", "    def has(self, name: str) -> bool:"]
    out += [f"        if name == {n!r}:\n            return self._{n} is not None" for n in fields]
    out += ["        return False"]
    for method, arg, op in (("to", "device: torch.device", "{v}.to(device)"), ("__getitem__", "item", "{v}[item]")):
        out += ["", f"    def {method}(self, {arg}) -> '{cls_name}':", f"        ret = {cls_name}(self.image_size)"]
        for n, t in fields.items():
            if method == "to" and not hasattr(t, "to"):
                continue  # fields that cannot move stay behind, as in detectron2
            v = f"value_{n}"
            out += [f"        {v} = self._{n}", f"        if {v} is not None:"]
            out += [f"            ret._{n} = {op.format(v=v)}"]
        out += ["        return ret"]
    return "\n".join(out) + "\n"


def _add_conversions(new_cls: type) -> None:
    """``x.to_instances()`` and ``new_cls.from_instances(inst)`` between the stand-in and ``Instances`` (eager)."""

    @torch.jit.unused
    def to_instances(self: Any) -> Instances:
        ret = Instances(self.image_size)
        for name in self._field_names:
            value = getattr(self, "_" + name)
            if value is not None:
                ret.set(name, value)
        return ret

    @torch.jit.unused
    def from_instances(instances: Instances) -> Any:
        ret = new_cls(instances.image_size)
        for name, value in instances.get_fields().items():
            if name not in ret._field_names:
                raise ValueError(
                    f"{new_cls.__name__}.from_instances: field {name!r} is not one of the scripted fields "
                    f"{list(ret._field_names)}"
                )
            setattr(ret, name, copy.deepcopy(value))
        return ret

    new_cls.to_instances = to_instances  # type: ignore[attr-defined]
    new_cls.from_instances = staticmethod(from_instances)  # type: ignore[attr-defined]


@contextmanager
def patch_instances(fields: Mapping[str, type]) -> Iterator[type]:
    """While open, TorchScript compiles ``Instances`` as a typed class with exactly ``fields``
    (``{"pred_boxes": Boxes, "scores": torch.Tensor, ...}``); yields that class. Eager code is unaffected."""
    fields = dict(fields)
    n = next(_class_ids)
    cls_name = f"ScriptedInstances{n}"
    module_name = f"detlightning_scripted_instances_{n}"
    _clear_jit_cache()
    with tempfile.TemporaryDirectory(prefix="detlightning_instances_") as tmp:
        path = Path(tmp) / f"{module_name}.py"
        path.write_text(_class_source(cls_name, fields), encoding="utf-8")
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            new_cls = getattr(module, cls_name)
            # names in the class resolve in its own module (by default: in the frame calling torch.jit.script)
            torch.jit.script(new_cls, _rcb=torch._jit_internal.createResolutionCallbackForClassMethods(new_cls))
            # TorchScript asks these two attributes which compiled class stands for a Python class
            Instances.__torch_script_class__ = True  # type: ignore[attr-defined]
            Instances._jit_override_qualname = torch._jit_internal._qualified_name(new_cls)  # type: ignore
            _add_conversions(new_cls)
            yield new_cls
        finally:
            for attr in ("__torch_script_class__", "_jit_override_qualname"):
                if attr in Instances.__dict__:
                    delattr(Instances, attr)
            sys.modules.pop(module_name, None)
            _clear_jit_cache()


@contextmanager
def freeze_training_mode(model: nn.Module) -> Iterator[None]:
    """Annotate ``training`` of every submodule class of ``model`` as ``torch.jit.Final`` while open, so that
    scripting treats it as a constant and skips the branches of the other mode."""
    classes = {type(m) for m in model.modules()}
    classes = {c for c in classes if not hasattr(c, "__constants__")}  # the older constant mechanism
    previous: dict[type, Any] = {}
    for cls in classes:
        annotations = cls.__dict__.get("__annotations__")
        if annotations is None:
            cls.__annotations__ = annotations = {}
        previous[cls] = annotations.get("training", _MISSING)
        annotations["training"] = torch.jit.Final[bool]
    try:
        yield
    finally:
        for cls, old in previous.items():
            if old is _MISSING:
                cls.__dict__["__annotations__"].pop("training", None)
            else:
                cls.__dict__["__annotations__"]["training"] = old


_MISSING = object()
