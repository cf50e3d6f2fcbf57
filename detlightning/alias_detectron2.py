"""Opt-in alias: ``import detectron2`` (and every ``detectron2.X.Y``) gives detlightning's modules.

For code you cannot or do not want to edit. Turn it on in one of two ways:

* in Python, before the first ``import detectron2``::

      import detlightning.alias_detectron2   # installs the alias (importing detlightning alone never does)
      from detectron2.config import get_cfg  # detlightning.config.get_cfg

* from the shell, for a script or module that stays untouched (the ``detlightning-run`` console script, or the
  same through ``python -m``)::

      detlightning-run train_net.py --config-file cfg.yaml        # like: python train_net.py --config-file ...
      detlightning-run -m my_project.train --num-gpus 1            # like: python -m my_project.train ...
      python -m detlightning.alias_detectron2 train_net.py ...     # without the console script

  The target runs as ``__main__`` with ``sys.argv`` and ``sys.path[0]`` set as ``python`` sets them (the script's
  folder for a script, the current folder for ``-m``).

What it maps: ``detectron2`` -> ``detlightning`` and ``detectron2.<path>`` -> ``detlightning.<path>``, at any depth.
The names are bound to the very same module objects (``sys.modules["detectron2.modeling"] is
detlightning.modeling``), so registries, ``isinstance`` checks and pickles written under ``detectron2.*`` names agree.
A module detlightning lacks raises ``ModuleNotFoundError`` naming the detlightning module it looked for; a missing
name raises Python's usual ``ImportError``/``AttributeError``, which names the detlightning module.

What it refuses: installing itself when a real detectron2 is importable (``importlib.util.find_spec("detectron2")``
finds one on ``sys.path``) or already imported — the two would silently shadow each other — with an ``ImportError``
saying where that detectron2 lives. A folder named ``detectron2`` without ``__init__.py`` (a namespace package, e.g.
an output folder) is not a detectron2 and does not block the alias.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["Detectron2Alias", "install", "is_installed", "main", "uninstall"]

ALIAS = "detectron2"
TARGET = "detlightning"

_USAGE = """usage: detlightning-run SCRIPT.py [ARGS...]
       detlightning-run -m MODULE [ARGS...]

Runs a script or module with `import detectron2` resolving to detlightning (see detlightning.alias_detectron2)."""


def _target_name(fullname: str) -> str:
    return TARGET + fullname[len(ALIAS):]


class Detectron2Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A ``sys.meta_path`` finder/loader that answers ``detectron2[.X...]`` with ``detlightning[.X...]``."""

    # how install() recognises an alias, also one defined by another copy of this module (``python -m`` runs the
    # file as ``__main__``, and the target may import ``detlightning.alias_detectron2`` again)
    is_detlightning_alias = True

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = _target_name(fullname)
        try:
            found = importlib.util.find_spec(real)
        except ModuleNotFoundError:  # a parent package is missing too
            found = None
        if found is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: the detectron2 alias maps it to {real!r}, which detlightning does not "
                f"have (see docs/migrating_from_detectron2.md for where detectron2's modules live in detlightning)",
                name=fullname,
            )
        return importlib.machinery.ModuleSpec(fullname, self, is_package=found.submodule_search_locations is not None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a throwaway module; exec_module puts the real one in its place

    def exec_module(self, module: ModuleType) -> None:
        # the import system reads sys.modules[name] back after exec_module, so the alias name ends up bound to the
        # detlightning module object itself (not a copy), and so does the attribute on the parent package
        sys.modules[module.__name__] = importlib.import_module(_target_name(module.__name__))


def is_installed() -> bool:
    """Whether a detectron2 alias finder is on ``sys.meta_path``."""
    return any(getattr(f, "is_detlightning_alias", False) for f in sys.meta_path)


def _is_real_package(spec: importlib.machinery.ModuleSpec) -> bool:
    """False for a namespace package (a bare folder named detectron2), which holds no detectron2 code."""
    return spec.origin not in (None, "namespace") and not isinstance(spec.loader, importlib.machinery.NamespaceLoader)


def install() -> None:
    """Put the alias first on ``sys.meta_path`` (a no-op when it is there already).

    Raises:
        ImportError: a real detectron2 is already imported or importable from ``sys.path``.
    """
    if is_installed():
        return
    loaded = sys.modules.get(ALIAS)
    if loaded is not None:
        raise ImportError(
            f"detlightning.alias_detectron2: a real detectron2 is already imported "
            f"({getattr(loaded, '__file__', None) or loaded!r}); the alias must be installed before anything imports "
            f"detectron2, and only where detectron2 is not installed"
        )
    spec = importlib.util.find_spec(ALIAS)
    if spec is not None and _is_real_package(spec):
        raise ImportError(
            f"detlightning.alias_detectron2: a real detectron2 is importable ({spec.origin}); refusing to alias "
            f"'detectron2' to detlightning, because one would silently shadow the other. Uninstall detectron2 "
            f"(or remove it from sys.path / PYTHONPATH), or import detlightning under its own name"
        )
    sys.meta_path.insert(0, Detectron2Alias())


def uninstall() -> None:
    """Remove the alias finder and forget every ``detectron2`` / ``detectron2.*`` name it bound in ``sys.modules``
    (the detlightning modules themselves stay imported)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "is_detlightning_alias", False)]
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        if getattr(sys.modules[name], "__name__", "").startswith(TARGET):
            del sys.modules[name]


def main(argv: Sequence[str] | None = None) -> int:
    """``detlightning-run``: install the alias, then run ``SCRIPT.py ARGS...`` or ``-m MODULE ARGS...`` as
    ``__main__``. Returns the exit status (2 for a usage error, 1 when the alias refuses); the target's own
    ``sys.exit`` propagates as ``SystemExit``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    try:
        install()
    except ImportError as e:
        print(f"detlightning-run: {e}", file=sys.stderr)
        return 1
    if args[0] == "-m":
        if len(args) < 2:
            print("detlightning-run: -m needs a module name\n" + _USAGE, file=sys.stderr)
            return 2
        module = args[1]
        sys.argv = [module, *args[2:]]  # run_module(alter_sys=True) replaces argv[0] with the module's file
        sys.path[0:1] = [os.getcwd()]  # python -m puts the current folder first
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    if not os.path.isfile(script):
        print(f"detlightning-run: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    sys.argv = [script, *args[1:]]
    sys.path[0:1] = [os.path.dirname(os.path.abspath(script))]  # python puts the script's folder first
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    install()
