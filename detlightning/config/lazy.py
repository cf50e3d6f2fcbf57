"""``LazyConfig``: detectron2's Python config files (``.py``) and their yaml form, on OmegaConf.

A lazy config file is plain Python that assigns config objects to top-level names::

    from detlightning.config import LazyCall as L
    from ..common.models.mask_rcnn_fpn import model     # relative imports load sibling config files
    from ..common.train import train

    model.roi_heads.num_classes = 3
    train.max_iter = 5

``LazyConfig.load`` runs it and returns a ``DictConfig`` of its public top-level dicts/configs (``model``, ``train``,
``dataloader``, ``optimizer``, ``lr_multiplier``, ...). ``LazyConfig.apply_overrides`` takes Hydra command-line
syntax (``["train.max_iter=5", "model.roi_heads.num_classes=3"]``); ``save``/``load`` round-trip through yaml;
``to_py`` prints a config back as Python.
"""
from __future__ import annotations

import builtins
import contextlib
import inspect
import logging
import os
import pickle
import types
import uuid
from collections.abc import Iterator, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, SCMode

from ..utils.registry import locate
from .instantiate import TARGET_KEY, target_to_string

__all__ = ["LazyConfig", "apply_updates", "to_yaml"]

logger = logging.getLogger(__name__)

# Config files are executed as modules of this (non-existent) package, so that their relative imports can be told
# apart from ordinary imports and resolved to files next to them.
_CFG_PACKAGE = "detlightning._lazy_config"


def _as_config(value: Any) -> Any:
    """A plain dict becomes a DictConfig (objects allowed); configs and everything else are returned unchanged."""
    if isinstance(value, dict):
        return DictConfig(value, flags={"allow_objects": True})
    return value


def _relative_target(importer_file: str, name: str, level: int) -> Path:
    """The path (without ``.py``) a ``from <level dots><name> import ...`` in ``importer_file`` refers to."""
    folder = Path(importer_file).parent
    for _ in range(level - 1):
        folder = folder.parent
    return folder.joinpath(*name.split(".")) if name else folder


def _resolve_relative(importer_file: str, name: str, level: int) -> Path:
    """The config file a ``from <level dots><name> import ...`` in ``importer_file`` refers to."""
    path = _relative_target(importer_file, name, level).with_suffix(".py")
    if not path.is_file():
        dots = "." * level
        raise ImportError(
            f"Config file {importer_file} imports '{dots}{name}', which should be the config file {path}, "
            "but that file does not exist. Relative imports in lazy config files must name other config files."
        )
    return path


def _exec_config_file(path: Path) -> dict[str, Any]:
    """Execute a lazy config file and return its global namespace."""
    source = path.read_text()
    namespace: dict[str, Any] = {
        "__file__": str(path),
        "__name__": f"{_CFG_PACKAGE}.{uuid.uuid4().hex[:8]}.{path.stem}",
        "__package__": f"{_CFG_PACKAGE}.{uuid.uuid4().hex[:8]}",
    }
    code = compile(source, str(path), "exec")
    exec(code, namespace)
    return namespace


class _ConfigModule:
    """What ``from ..common.train import train`` sees: the executed file's namespace as a module-like object."""

    def __init__(self, path: Path, namespace: dict[str, Any]) -> None:
        self.__file__ = str(path)
        self.__name__ = namespace["__name__"]
        for key, value in namespace.items():
            if not key.startswith("__"):
                setattr(self, key, _as_config(value))


@contextlib.contextmanager
def _relative_imports_as_config_files() -> Iterator[None]:
    """While active, a relative import inside a config file loads the sibling config file it names."""
    original_import = builtins.__import__

    def patched_import(name, globals=None, locals=None, fromlist=(), level=0):
        package = (globals or {}).get("__package__") or ""
        if level == 0 or not package.startswith(_CFG_PACKAGE):
            return original_import(name, globals, locals, fromlist, level)
        importer = globals["__file__"]
        folder = _relative_target(importer, name, level)
        if folder.is_dir():
            # "from . import coco" / "from ..common import optim": each listed name is a config file in the folder
            namespace = types.SimpleNamespace()
            for item in fromlist or ():
                item_path = _resolve_relative(str(folder / "_"), item, 1)
                setattr(namespace, item, _ConfigModule(item_path, _exec_config_file(item_path)))
            return namespace
        path = _resolve_relative(importer, name, level)
        return _ConfigModule(path, _exec_config_file(path))

    builtins.__import__ = patched_import
    try:
        yield
    finally:
        builtins.__import__ = original_import


class LazyConfig:
    """Load, save, override and print lazy configs (detectron2's ``LazyConfig`` API)."""

    @staticmethod
    def load(filename: str | os.PathLike, keys: None | str | Sequence[str] = None) -> Any:
        """Load a ``.py`` config file (executed, relative imports allowed) or a ``.yaml`` one (as saved by
        :meth:`save`).

        Returns a ``DictConfig`` of the file's public top-level configs; with ``keys``, only those entries (one
        value for a string, a tuple for a sequence).
        """
        path = Path(filename).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Lazy config file {str(path)!r} does not exist")
        if path.suffix == ".py":
            with _relative_imports_as_config_files():
                namespace = _exec_config_file(path.resolve())
            content = {
                name: _as_config(value)
                for name, value in namespace.items()
                if not name.startswith("_") and isinstance(value, (DictConfig, ListConfig, dict))
            }
            cfg = DictConfig(content, flags={"allow_objects": True})
        elif path.suffix in (".yaml", ".yml"):
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"{path}: a lazy config yaml must hold a mapping at the top, got a list")
            cfg = DictConfig(OmegaConf.to_container(loaded, resolve=False), flags={"allow_objects": True})
        else:
            raise ValueError(f"{path}: a lazy config must be a .py or .yaml file, not {path.suffix!r}")
        if keys is None:
            return cfg
        if isinstance(keys, str):
            return cfg[keys]
        return tuple(cfg[k] for k in keys)

    @staticmethod
    def load_rel(filename: str, keys: None | str | Sequence[str] = None) -> Any:
        """:meth:`load` with ``filename`` relative to the file of the caller (for use inside config files)."""
        caller_file = inspect.stack()[1].filename
        if caller_file == "<string>":
            raise RuntimeError("load_rel() needs to be called from a file")
        return LazyConfig.load(Path(caller_file).parent / filename, keys)

    @staticmethod
    def save(cfg: DictConfig, filename: str | os.PathLike) -> None:
        """Save ``cfg`` as yaml, callables written as their import paths so :meth:`load` rebuilds the same config.

        Values yaml cannot hold (objects, lambdas) make the save fall back to a pickle written next to it
        (``filename + ".pkl"``), and a warning says which.
        """
        path = Path(filename)
        try:
            text = to_yaml(cfg)
        except Exception as e:
            fallback = Path(f"{path}.pkl")
            logger.warning("Config cannot be saved as yaml (%s); pickling it to %s instead", e, fallback)
            try:
                data = pickle.dumps(cfg)
            except Exception as pickle_error:  # e.g. a lambda: neither yaml nor pickle can hold it
                logger.error("Config cannot be saved to %s at all: %s", path, pickle_error)
                return
            fallback.parent.mkdir(parents=True, exist_ok=True)
            fallback.write_bytes(data)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """Apply command-line overrides in Hydra syntax (``a.b=1``, ``a.c=[1,2]``, ``a.d=null``), in place.

        An override that goes through a value that is not a config (``train.max_iter.x=1``) is an error naming the
        key, and so is one that sets a key the config lacks, unless it is written ``+a.new_key=1`` (Hydra's way of
        adding a key; detectron2 adds such keys silently, which hides typos). Returns ``cfg``.
        """
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for override in parser.parse_overrides(list(overrides)):
            key = override.key_or_group
            if override.is_delete():
                raise ValueError(f"Override {override.input_line!r}: deleting keys (~key) is not supported")
            _safe_update(cfg, key, override.value(), add=override.is_add() or override.is_force_add())
        return cfg

    @staticmethod
    def to_py(cfg: DictConfig, prefix: str = "cfg.") -> str:
        """Python source that rebuilds ``cfg``: one assignment per top-level entry, lazy calls as ``L(target)(...)``.

        The output imports what it names; ``exec`` it with ``cfg`` bound to an empty ``DictConfig`` (with objects
        allowed) to get the same config back.
        """
        cfg = deepcopy(cfg)
        modules: set[str] = set()
        body = [f"{prefix}{key} = {_py_expr(value, modules)}" for key, value in cfg.items_ex(resolve=False)]
        header = ["from detlightning.config import LazyCall as L"] + [f"import {m}" for m in sorted(modules)]
        return "\n".join(header + [""] + body) + "\n"


def to_yaml(cfg: DictConfig) -> str:
    """The yaml text :meth:`LazyConfig.save` writes (callables as import paths); raises when yaml cannot hold the
    config (objects, lambdas)."""
    container = _to_savable(cfg)
    text = yaml.safe_dump(container, sort_keys=False, default_flow_style=None, width=9999)
    if yaml.safe_load(text) != container:
        raise ValueError("the yaml form does not reload to the same config")
    return text


def apply_updates(cfg: DictConfig, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a nested mapping of values (``{"train": {"max_iter": 5}}``) to ``cfg`` leaf by leaf, with the checks
    of :meth:`LazyConfig.apply_overrides`; a mapping value replaces a ``None`` or merges into a config node.
    Returns the flat ``{dotted key: value}`` applied."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            dotted = f"{prefix}{key}"
            if isinstance(value, (DictConfig, Mapping)) and value and not OmegaConf.is_missing(node, key):
                walk(value, dotted + ".")
            else:
                flat[dotted] = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value

    walk(updates, "")
    for key, value in flat.items():
        _safe_update(cfg, key, value)
    return flat


def _safe_update(cfg: DictConfig, key: str, value: Any, add: bool = False) -> None:
    """``OmegaConf.update`` that refuses to go through a non-config value and, unless ``add``, to create a key.

    A typo (``train.max_iters=5``) would otherwise add a key nothing reads; Hydra's ``+key=value`` adds one on
    purpose.
    """
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[: depth + 1])
        if not isinstance(node, DictConfig):
            raise KeyError(
                f"Override {key}={value!r}: {'.'.join(parts[:depth])!r} is not a config node but a "
                f"{type(node).__name__} ({node!r})"
            )
        if part not in node:
            if add or (depth == len(parts) - 1 and _call_accepts(node, part, key)):
                break
            raise KeyError(
                f"Override {key}={value!r}: the config has no key {prefix!r} (use '+{key}=...' to add a new key)"
            )
        child = node._get_node(part)  # unresolved: an interpolation is replaced, not followed
        node = child if isinstance(child, (DictConfig, ListConfig)) else child._value()
        if node is None or (isinstance(node, DictConfig) and node._is_none()):
            break  # a None value may be replaced by a config
    OmegaConf.update(cfg, key, value, merge=True, force_add=add)


def _call_accepts(node: DictConfig, arg: str, key: str) -> bool:
    """Whether ``node`` is a lazy call whose target takes argument ``arg`` (an argument left at its default is not
    in the config, but overriding it is fine). Raises a KeyError listing the target's arguments when it does not."""
    if TARGET_KEY not in node:
        return False
    target = node[TARGET_KEY]
    try:
        target = locate(target) if isinstance(target, str) else target
        params = inspect.signature(target).parameters
    except (ImportError, TypeError, ValueError):
        return True  # cannot tell: let instantiate() report it
    if arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    name = getattr(target, "__qualname__", repr(target))
    raise KeyError(f"Override {key}: {name} has no argument {arg!r}; its arguments are {sorted(params)}")


def _to_savable(cfg: Any) -> Any:
    """A plain container of ``cfg`` with every callable ``_target_`` turned into its import path."""

    def convert(node: Any) -> Any:
        if isinstance(node, (DictConfig, Mapping)):
            items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
            out = {}
            for k, v in items:
                if k == TARGET_KEY and callable(v) and not isinstance(v, (DictConfig, Mapping)):
                    out[k] = target_to_string(v)
                else:
                    out[k] = convert(v)
            return out
        if isinstance(node, (ListConfig, list, tuple)):
            return [convert(v) for v in node]
        return node

    plain = OmegaConf.to_container(cfg, resolve=False, structured_config_mode=SCMode.DICT) if isinstance(
        cfg, (DictConfig, ListConfig)
    ) else cfg
    return convert(plain)


def _py_expr(value: Any, modules: set[str]) -> str:
    """A Python expression for a config value (lazy calls become ``L(module.name)(k=v, ...)``)."""
    if isinstance(value, (DictConfig, Mapping)):
        items = list(value.items_ex(resolve=False) if isinstance(value, DictConfig) else value.items())
        if TARGET_KEY in dict(items):
            target = dict(items)[TARGET_KEY]
            path = target_to_string(target) if not isinstance(target, str) else target
            module = path.rsplit(".", 1)[0]
            modules.add(module)
            args = ", ".join(f"{k}={_py_expr(v, modules)}" for k, v in items if k != TARGET_KEY)
            return f"L({path})({args})"
        return "{" + ", ".join(f"{k!r}: {_py_expr(v, modules)}" for k, v in items) + "}"
    if isinstance(value, (ListConfig, list)):
        return "[" + ", ".join(_py_expr(v, modules) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(f"{_py_expr(v, modules)}, " for v in value) + ")"
    if callable(value):  # a class or function given as a value (not called): written as its import path
        path = target_to_string(value)
        modules.add(path.rsplit(".", 1)[0])
        return path
    return repr(value)

