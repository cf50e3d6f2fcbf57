"""The dependency arrows of design.md: walk every import in the package (ast) and fail on one pointing the wrong way."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "detlightning"

# subpackage -> the detlightning subpackages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "layers": {"utils"},
    "structures": {"utils", "layers"},
    "config": {"utils"},
    "modeling": {"utils", "layers", "structures", "config"},
    "checkpoint": {"utils"},
    "data": {"utils", "structures", "config"},
    "evaluation": {"utils", "structures", "config", "data"},
    "engine": {"utils", "layers", "structures", "config", "modeling", "checkpoint", "data", "evaluation", "solver"},
    "export": {"utils", "layers", "structures", "config", "modeling"},
    "model_zoo": {"utils", "config", "modeling", "checkpoint"},
    "solver": {"utils", "config"},
    "conf": set(),
}
# single files allowed one more arrow, with the reason
FILE_EXCEPTIONS: dict[str, set[str]] = {
    # detectron2 keeps DatasetMapperTTA (resize/flip augmentations) beside GeneralizedRCNNWithTTA in modeling
    "modeling/test_time_augmentation.py": {"data"},
    # FastRCNNOutputLayers.from_config: federated-loss class weights from the training datasets' image counts
    "modeling/roi_heads/fast_rcnn.py": {"data"},
    # load_proposals_into_dataset: proposal files go through the checkpoints' restricted unpickler
    "data/build.py": {"checkpoint"},
}
# these must stay plain torch: no Lightning or Hydra at module level
NO_FRAMEWORK = {"modeling", "layers", "structures"}
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra")


def _imports(path: Path):
    """(module name, is_module_level) for every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, id(node) in top_level


CONFIG_FILES = PKG / "model_zoo" / "configs"  # LazyConfig files: user-level configs that may name any module


def _files():
    return sorted(p for p in PKG.rglob("*.py") if CONFIG_FILES not in p.parents)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_the_right_way(path: Path):
    rel = path.relative_to(PKG)
    if len(rel.parts) == 1:
        return  # detlightning/__init__.py
    sub = rel.parts[0]
    allowed = ALLOWED.get(sub)
    assert allowed is not None, f"new subpackage detlightning/{sub}: add it to ALLOWED in {__file__}"
    allowed = allowed | FILE_EXCEPTIONS.get(rel.as_posix(), set())
    for name, module_level in _imports(path):
        parts = name.split(".")
        if parts[0] == "detlightning" and len(parts) > 1:
            target = parts[1]
            assert target == sub or target in allowed, (
                f"{rel} imports detlightning.{target}; detlightning.{sub} may only import {sorted(allowed)}"
            )
        if sub in NO_FRAMEWORK and module_level:
            assert parts[0] not in FRAMEWORKS, f"{rel} imports {name} at module level; {sub} must stay plain torch"


@pytest.mark.parametrize("path", sorted(CONFIG_FILES.rglob("*.py")), ids=lambda p: str(p.relative_to(CONFIG_FILES)))
def test_lazy_config_files_need_no_training_framework(path: Path):
    """A model-zoo LazyConfig describes models, data and schedules; it must load without Lightning or Hydra."""
    for name, _ in _imports(path):
        assert name.split(".")[0] not in FRAMEWORKS, f"{path.relative_to(PKG)} imports {name}"


def test_plain_torch_entry_points_import_without_lightning():
    """The model library, the solver and the data loaders serve a plain-PyTorch loop (scripts/plain_train_net.py):
    importing them must not import Lightning or Hydra."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import detlightning.modeling, detlightning.solver, detlightning.checkpoint\n"
        "import detlightning.data, detlightning.evaluation, detlightning.utils.events\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
