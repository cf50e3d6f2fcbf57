"""collect_env_info: a table naming the installed versions; a missing package shows "not found"."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import torch

from detlightning.utils.collect_env import collect_env_info


def _row(report: str, key: str) -> str:
    """The value column of the row whose first column is exactly ``key`` (columns are 2+ spaces apart)."""
    (line,) = [ln for ln in report.splitlines() if re.match(re.escape(key) + r" {2,}\S", ln)]
    return line[len(key):].strip()


def test_report_names_the_versions():
    report = collect_env_info()
    assert _row(report, "PyTorch").startswith(torch.__version__)
    assert _row(report, "numpy").startswith(np.__version__)
    assert _row(report, "CUDA available") == str(torch.cuda.is_available())
    assert _row(report, "sys.platform") == sys.platform


def test_missing_package_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes `import faster_coco_eval` raise ImportError
    monkeypatch.setitem(sys.modules, "lightning", None)
    report = collect_env_info()
    assert _row(report, "faster-coco-eval") == "not found"
    assert _row(report, "Lightning") == "not found"


def test_module_entry_point_prints_the_report():
    proc = subprocess.run([sys.executable, "-m", "detlightning.utils.collect_env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.__version__ in proc.stdout
