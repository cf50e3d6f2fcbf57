"""Every notebook in notebooks/ runs top to bottom in a Jupyter kernel (nbclient), as "Run All" would.

Each runs in a temporary working directory with its own dataset cache; a failing cell fails the test with the
cell's traceback. The training notebook runs a handful of iterations (DETLIGHTNING_NOTEBOOK_MAX_ITER)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "partial_execution.ipynb", "train_custom.ipynb"} <= names, names


def test_notebooks_are_saved_without_outputs() -> None:
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the kernel inherits this environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("DETLIGHTNING_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DETLIGHTNING_NOTEBOOK_MAX_ITER", "10")  # training notebooks: a few iterations prove they run
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(str(path), as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources)
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    # the pictures were produced: quickstart's inline PNGs
    if path.stem == "quickstart":
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs)
