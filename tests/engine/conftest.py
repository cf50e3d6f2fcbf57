from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests._scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_overrides(shapes_root: Path, model: str = "mask_rcnn") -> list[str]:
    """A model and data small enough for a few CPU training steps in seconds."""
    return [
        f"model={model}",
        "model.resnets.depth=18",
        "model.resnets.res2_out_channels=64",
        "model.resnets.norm=BN",
        "model.backbone.freeze_at=0",
        "model.fpn.out_channels=32",
        "model.rpn.pre_nms_topk_train=200",
        "model.rpn.post_nms_topk_train=64",
        "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_test=50",
        "model.roi_heads.batch_size_per_image=32",
        "model.roi_box_head.fc_dim=64",
        "model.roi_mask_head.conv_dim=16",
        "datasets.shapes.num_train=8",
        "datasets.shapes.num_val=4",
        "datasets.shapes.image_size=64",
        f"datasets.shapes.root={shapes_root}",
        "input.min_size_train=[64]",
        "input.max_size_train=100",
        "input.min_size_test=64",
        "input.max_size_test=100",
        "dataloader.num_workers=0",
        "dataloader.ims_per_batch=2",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "solver.max_iter=4",
        "solver.base_lr=0.01",
        "solver.warmup_iters=2",
        "solver.steps=[3]",
        "solver.checkpoint_period=2",
        "solver.eval_period=0",
        "trainer.log_every_n_steps=1",
        "callbacks.metrics_writer.period=2",
        "seed=0",
    ]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="session")
def train_script() -> ModuleType:
    """scripts/train.py as a module (its ``run(cfg)`` is what the Hydra entry point calls)."""
    return load_script("train")


@pytest.fixture(scope="session")
def mask_rcnn_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory, train_script: ModuleType):
    """4 training steps of a tiny Mask R-CNN through scripts/train.py's run(), with training-batch visualisation
    every 2 iterations; (cfg, results, output_dir)."""
    from detlightning.config import compose

    out = tmp_path_factory.mktemp("mask_rcnn_run")
    cfg = compose(tiny_overrides(shapes_root) + [f"paths.output_dir={out}", "vis_period=2"])
    results = train_script.run(cfg)
    return cfg, results, out


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Under ``pytest -n 2`` on 2 cores, two workers with 2 OpenMP threads each oversubscribe the CPU, which slows
    convolutions several-fold; one thread per worker is fastest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
