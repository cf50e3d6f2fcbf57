from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPAT_DIR = Path(os.environ.get("DETLIGHTNING_COMPAT_DIR", REPO_ROOT.parent / "shared" / "compat"))


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """``../shared/compat`` (detectron2 reference weights manifests and outputs); skips when absent."""
    if not (COMPAT_DIR / "weights.py").is_file():
        pytest.skip(f"detectron2 reference data not found at {COMPAT_DIR} (expected ../shared/compat beside the repo)")
    return COMPAT_DIR
