from __future__ import annotations

from pathlib import Path

import pytest

from detlightning.config import compose
from detlightning.data import DatasetCatalog
from detlightning.data.datasets.shapes import register_shapes

# A tiny shapes dataset under its own prefix, so the default "shapes_*" registrations stay untouched.
TINY = dict(num_train=8, num_val=4, image_size=64, seed=0)
PREFIX = "tshapes"


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_root")
    register_shapes(PREFIX, root=root, replace=True, **TINY)
    DatasetCatalog.get(f"{PREFIX}_train")  # generate once
    DatasetCatalog.get(f"{PREFIX}_val")
    return root


def make_cfg(*overrides: str, root: Path | None = None):
    """The project config with the shapes data group, pointing at the tiny dataset."""
    extra = [
        "model=mask_rcnn",
        f"datasets.shapes.prefix={PREFIX}",
        f"datasets.shapes.num_train={TINY['num_train']}",
        f"datasets.shapes.num_val={TINY['num_val']}",
        f"datasets.shapes.image_size={TINY['image_size']}",
        f"datasets.train=[{PREFIX}_train]",
        f"datasets.test=[{PREFIX}_val]",
        "input.min_size_train=[64]",
        "input.max_size_train=128",
        "input.min_size_test=64",
        "input.max_size_test=128",
        "dataloader.num_workers=0",
        "seed=0",
    ]
    if root is not None:
        extra.append(f"datasets.shapes.root={root}")
    try:
        # once config.yaml lists the data group in its defaults
        return compose(["data=shapes", *extra, *overrides])
    except Exception:
        return compose(["+data=shapes", *extra, *overrides])


@pytest.fixture()
def tiny_cfg(shapes_root: Path):
    """``tiny_cfg(*overrides)`` -> config on the tiny shapes dataset."""

    def factory(*overrides: str):
        return make_cfg(*overrides, root=shapes_root)

    return factory
