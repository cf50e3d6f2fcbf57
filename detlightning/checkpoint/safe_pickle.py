"""Safe-by-default readers for checkpoint files.

Pickle can run arbitrary code while loading. Checkpoints from the internet are therefore read with
restricted loaders that only rebuild tensors, numpy arrays and plain containers:

* ``.pkl`` files (detectron2 model zoo, Caffe2/Detectron1) go through :class:`RestrictedUnpickler`;
* ``.pth`` / ``.ckpt`` files go through ``torch.load(weights_only=True)`` with numpy arrays allowed.

Anything else raises :class:`pickle.UnpicklingError` naming the refused global. A user who trusts a
file opts in with ``allow_unsafe_pickle=True`` (on the checkpointer) or the environment variable
``DETLIGHTNING_ALLOW_UNSAFE_PICKLE=1``.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import contextlib
import importlib
import os
import pickle
import re
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

__all__ = [
    "ALLOW_UNSAFE_PICKLE_ENV",
    "RestrictedUnpickler",
    "unsafe_pickle_allowed",
    "load_pickle",
    "torch_load",
]

ALLOW_UNSAFE_PICKLE_ENV = "DETLIGHTNING_ALLOW_UNSAFE_PICKLE"

_OPT_IN_HINT = (
    "If you trust the source of this file, pass allow_unsafe_pickle=True to the checkpointer "
    f"(e.g. DetectionCheckpointer(model, allow_unsafe_pickle=True)) or set the environment variable "
    f"{ALLOW_UNSAFE_PICKLE_ENV}=1; loading an untrusted pickle can execute arbitrary code."
)

# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either one.
_NUMPY_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_NUMPY_CORE_FUNCS = {"_reconstruct", "scalar", "_frombuffer"}

_SAFE_BUILTINS = {
    "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "bool", "complex",
    "slice", "range",
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); it only transforms data.
    ("_codecs", "encode"): None,
}


def unsafe_pickle_allowed(flag: bool | None = None) -> bool:
    """``flag`` if given, else whether ``$DETLIGHTNING_ALLOW_UNSAFE_PICKLE`` is set to a true value."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ALLOW_UNSAFE_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _numpy_core_attr(module: str, name: str) -> Any:
    """Resolve a numpy-internal function under whichever of numpy.core / numpy._core this numpy has."""
    leaf = module.rsplit(".", 1)[-1]
    errors = []
    # Prefer the non-deprecated location so numpy 2 does not warn about numpy.core.
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{leaf}"), name)
        except (ImportError, AttributeError) as e:
            errors.append(e)
    raise pickle.UnpicklingError(f"cannot resolve numpy global {module}.{name}: {errors}")


def _numpy_dtype_classes() -> list[type]:
    """numpy >= 1.25 gives every dtype its own class (numpy.dtypes.Float32DType, ...)."""
    mod = getattr(np, "dtypes", None)
    if mod is None:
        return []
    return [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, np.dtype)]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only numpy arrays/dtypes/scalars and plain containers.

    Any other global (a function such as ``os.system`` or a user class) raises
    :class:`pickle.UnpicklingError` naming ``module.name`` and how to opt in.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles (Detectron1 era) name e.g. __builtin__ / copy_reg; map them like pickle's
        # fix_imports does (those module names do not exist in Python 3, so mapping is always safe).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module in _NUMPY_CORE_MODULES and name in _NUMPY_CORE_FUNCS:
            return _numpy_core_attr(module, name)
        if (module, name) in _SAFE_GLOBALS:
            obj = _SAFE_GLOBALS[(module, name)]
            return obj if obj is not None else super().find_class(module, name)
        if module == "numpy.dtypes":
            cls = getattr(getattr(np, "dtypes", None), name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                return cls
        raise pickle.UnpicklingError(
            f"Refusing to unpickle global '{module}.{name}' from {self._source}: by default only numpy "
            f"arrays and plain containers (dict, list, tuple, OrderedDict, ...) are loaded from .pkl files. "
            + _OPT_IN_HINT
        )


def load_pickle(path: str | os.PathLike[str], *, allow_unsafe: bool | None = None) -> Any:
    """Read a ``.pkl`` file (``encoding="latin1"`` so Python 2 era Detectron files load).

    Restricted to numpy arrays and containers unless ``allow_unsafe`` (or the env opt-in) is set.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        if unsafe_pickle_allowed(allow_unsafe):
            return pickle.load(f, encoding="latin1")
        return RestrictedUnpickler(f, source=path, encoding="latin1").load()


@contextlib.contextmanager
def _numpy_safe_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` rebuild numpy arrays, under both numpy 1 and 2 names."""
    safe: list[Any] = [np.ndarray, np.dtype, *_numpy_dtype_classes()]
    for mod in ("numpy.core.multiarray", "numpy.core.numeric"):
        for fn in sorted(_NUMPY_CORE_FUNCS):
            try:
                obj = _numpy_core_attr(mod, fn)
            except pickle.UnpicklingError:
                continue
            safe.append(obj)
            for base in ("numpy.core", "numpy._core"):
                safe.append((obj, f"{base}.{mod.rsplit('.', 1)[-1]}.{fn}"))
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is None:  # torch < 2.5: numpy arrays need the opt-in
        yield
        return
    with ctx(safe):
        yield


def torch_load(path: str | os.PathLike[str], *, allow_unsafe: bool | None = None) -> Any:
    """``torch.load`` to CPU; ``weights_only=True`` (plus numpy arrays) unless unsafe loading is allowed."""
    path = os.fspath(path)
    if unsafe_pickle_allowed(allow_unsafe):
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with _numpy_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"got <class '([\w.]+)'>", str(e))
        what = f"global '{found.group(1)}'" if found else "an object that is not a tensor or plain container"
        raise pickle.UnpicklingError(
            f"Refusing to load {path} with torch.load(weights_only=True): it contains {what}. " + _OPT_IN_HINT
        ) from e
