"""A table describing the software and hardware detlightning runs on, for bug reports (detectron2's
``collect_env``)::

    python -m detlightning.utils.collect_env

Every row is best effort: a package that is missing or fails to import shows "not found" (or the error) instead of
stopping the report.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["collect_env_info"]

_NOT_FOUND = "not found"


def _safe(fn: Callable[[], Any]) -> str:
    """``str(fn())``, or the exception's type and message when it raises."""
    try:
        return str(fn())
    except Exception as e:  # a report must not fail on a broken install
        return f"error: {type(e).__name__}: {e}"


def _module_version(name: str) -> str:
    """``<version> @ <package folder>`` of an importable module, or "not found"."""
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return _NOT_FOUND
    except Exception as e:  # importing can fail in other ways (a broken binary extension, ...)
        return f"error: {type(e).__name__}: {e}"
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version(name)
        except Exception:  # modules without a distribution of the same name
            version = "unknown version"
    path = os.path.dirname(getattr(mod, "__file__", None) or "") or "?"
    return f"{version} @{path}"


def _torch_rows() -> list[tuple[str, str]]:
    try:
        import torch
    except Exception as e:  # torch missing is exactly what a report must show
        return [("PyTorch", f"{_NOT_FOUND} ({type(e).__name__})")]
    rows = [
        ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
        ("PyTorch debug build", _safe(lambda: torch.version.debug)),
        ("CUDA available", _safe(torch.cuda.is_available)),
    ]
    if torch.cuda.is_available():
        names: dict[str, list[str]] = {}
        for i in range(torch.cuda.device_count()):
            name = _safe(lambda i=i: torch.cuda.get_device_name(i))
            cap = _safe(lambda i=i: ".".join(str(x) for x in torch.cuda.get_device_capability(i)))
            names.setdefault(f"{name} (arch {cap})", []).append(str(i))
        for name, ids in names.items():
            rows.append((f"GPU {','.join(ids)}", name))
        rows.append(("CUDA_HOME", os.environ.get("CUDA_HOME", "not set")))
    rows.append(("PyTorch built with CUDA", _safe(lambda: torch.version.cuda or "no")))
    rows.append(("cuDNN", _safe(lambda: torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                                else "not available")))
    if getattr(torch.version, "hip", None):
        rows.append(("ROCm / HIP", str(torch.version.hip)))
    return rows


def collect_env_info() -> str:
    """The report: one row per item (platform, Python, numpy, detlightning, torch and CUDA, torchvision, Lightning,
    Hydra, OmegaConf, COCO tools, Pillow) as a plain-text table."""
    rows: list[tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", _module_version("numpy")),
    ]
    try:
        import detlightning

        rows.append(("detlightning", f"{detlightning.__version__} @{os.path.dirname(detlightning.__file__)}"))
    except Exception as e:  # a half-installed package still deserves a report
        rows.append(("detlightning", f"error: {type(e).__name__}: {e}"))
    rows += _torch_rows()
    rows += [
        ("torchvision", _module_version("torchvision")),
        ("Lightning", _module_version("lightning")),
        ("hydra-core", _module_version("hydra")),
        ("OmegaConf", _module_version("omegaconf")),
        ("pycocotools", _module_version("pycocotools")),
        ("faster-coco-eval", _module_version("faster_coco_eval")),
        ("Pillow", _module_version("PIL")),
    ]
    try:
        from tabulate import tabulate

        return tabulate(rows)
    except ImportError:
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    """Print the report (``python -m detlightning.utils.collect_env``)."""
    print(collect_env_info())


if __name__ == "__main__":
    main()
