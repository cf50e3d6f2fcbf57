"""Name → object registries (detectron2 / fvcore ``Registry`` semantics) and ``locate`` for dotted import paths.

A registry maps a string to a class or function so that a config can select a component by name::

    BACKBONE_REGISTRY = Registry("BACKBONE")

    @BACKBONE_REGISTRY.register()
    class ToyBackbone(Backbone): ...

    BACKBONE_REGISTRY.register(build_my_backbone)   # call form
    BACKBONE_REGISTRY.get("ToyBackbone")(cfg, input_shape)
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from tabulate import tabulate

__all__ = ["Registry", "locate"]

T = TypeVar("T")


class Registry:
    """A mapping ``name -> object`` filled by ``register``; the name is the object's ``__name__``.

    Registering a second object under an existing name raises ``ValueError``, so that a silently shadowed
    component can never be built by mistake.
    """

    def __init__(self, name: str) -> None:
        """``name``: what the registry holds (shown in errors), e.g. ``"BACKBONE"``."""
        self._name: str = name
        self._obj_map: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    def _do_register(self, name: str, obj: Any) -> None:
        if name in self._obj_map:
            raise ValueError(
                f"An object named {name!r} was already registered in the {self._name!r} registry "
                f"(existing: {self._obj_map[name]!r}, new: {obj!r}); pick a different class/function name."
            )
        self._obj_map[name] = obj

    @staticmethod
    def _name_of(obj: Any) -> str:
        name = getattr(obj, "__name__", None)
        if not isinstance(name, str):
            raise TypeError(f"only objects with a __name__ (classes, functions) can be registered, got {obj!r}")
        return name

    @overload
    def register(self, obj: None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, obj: T) -> T: ...

    def register(self, obj: Any = None) -> Any:
        """Register ``obj`` under ``obj.__name__``.

        ``@registry.register()`` decorates a class or function (and returns it unchanged);
        ``registry.register(obj)`` registers directly and returns ``obj``.
        """
        if obj is None:

            def deco(func_or_class: T) -> T:
                self._do_register(self._name_of(func_or_class), func_or_class)
                return func_or_class

            return deco
        self._do_register(self._name_of(obj), obj)
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name``; ``KeyError`` listing the registered names when absent."""
        try:
            return self._obj_map[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._obj_map)) or "<none>"
            raise KeyError(
                f"No object named {name!r} found in the {self._name!r} registry; registered names: {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """Yields ``(name, obj)`` pairs in registration order."""
        return iter(list(self._obj_map.items()))

    def __len__(self) -> int:
        return len(self._obj_map)

    def keys(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._obj_map)

    def __repr__(self) -> str:
        table = tabulate(list(self._obj_map.items()), headers=["Names", "Objects"], tablefmt="fancy_grid")
        return f"Registry of {self._name}:\n{table}"

    __str__ = __repr__


def locate(name: str) -> Any:
    """Import and return the object at dotted path ``name`` (``"pkg.module.Class.attr"``).

    The longest importable module prefix is imported, the remaining parts are attribute look-ups.
    Raises ``ImportError`` naming the path and the part that could not be resolved.
    """
    if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
        raise ImportError(f"locate() needs a dotted import path like 'package.module.Name', got {name!r}")
    parts = name.split(".")
    module = None
    n_module_parts = 0
    import_error: Exception | None = None
    for i in range(len(parts), 0, -1):
        mod_name = ".".join(parts[:i])
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            # Only "this very module does not exist" means "try a shorter prefix"; a missing dependency inside an
            # existing module is a real error the user needs to see.
            if e.name is not None and not (mod_name == e.name or mod_name.startswith(e.name + ".")):
                raise ImportError(f"Cannot locate {name!r}: importing {mod_name!r} failed: {e}") from e
            import_error = e
            continue
        n_module_parts = i
        break
    if module is None:
        raise ImportError(f"Cannot locate {name!r}: no importable module prefix ({import_error})")
    obj: Any = module
    for depth, attr in enumerate(parts[n_module_parts:], start=n_module_parts):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            owner = ".".join(parts[:depth])
            raise ImportError(f"Cannot locate {name!r}: {owner!r} has no attribute {attr!r}") from None
    return obj
