"""Multi-process and multi-job runs on CPU: DDP (spawn, gloo) and a Hydra multirun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detlightning.config import compose
from detlightning.engine import train

from .conftest import REPO_ROOT, tiny_overrides


@pytest.mark.slow
def test_ddp_spawn_two_processes_cpu(shapes_root: Path, tmp_path: Path) -> None:
    """2 processes x 1 image = the same 2-image batches and optimizer steps as one process; one evaluation over
    all validation images, gathered on rank 0."""
    cfg = compose(
        tiny_overrides(shapes_root, "faster_rcnn")
        + ["trainer=ddp_spawn", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           "solver.max_iter=3", f"paths.output_dir={tmp_path}", "logger=csv", "callbacks.metrics_writer.period=1"]
    )
    results = train(cfg)
    assert any(k.startswith("bbox/") for k in results), results
    final = torch.load(tmp_path / "checkpoints" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2  # 3 optimizer steps
    with open(tmp_path / "metrics.json") as f:
        lines = [json.loads(line) for line in f]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1, 2]
    # one consolidated evaluation: the predictions of both ranks, every validation image once
    preds = torch.load(tmp_path / "inference" / "instances_predictions.pth", weights_only=False)
    assert sorted(p["image_id"] for p in preds) == sorted(set(p["image_id"] for p in preds))
    assert len(preds) == 4


@pytest.mark.slow
def test_multirun_two_jobs(shapes_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    script = str(REPO_ROOT / "scripts" / "train.py")
    cmd = [sys.executable, script, "-m"] + tiny_overrides(shapes_root, "faster_rcnn") + [
        "solver.max_iter=1", "solver.base_lr=0.01,0.02", f"hydra.sweep.dir={sweep}", "logger=csv",
        "datasets.test=[]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for job, lr in (("0", 0.01), ("1", 0.02)):
        assert (sweep / job / "checkpoints" / "model_final.pth").is_file()
        saved = (sweep / job / "config.yaml").read_text()
        assert f"base_lr: {lr}" in saved


@pytest.mark.slow
def test_ddp_subprocess_launcher_through_train_script(shapes_root: Path, tmp_path: Path) -> None:
    """`trainer=ddp` (what multi-GPU users run) from the Hydra command line: Lightning re-launches the script for
    rank 1; both ranks share the run dir; 3 optimizer steps of 2 images, one evaluation over all images."""
    run_dir = tmp_path / "ddp_run"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")] + tiny_overrides(shapes_root, "faster_rcnn") + [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false",
        "solver.max_iter=3", "callbacks.metrics_writer.period=1", f"hydra.run.dir={run_dir}", "logger=csv",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Final evaluation results, shapes_val: bbox/AP" in output
    with open(run_dir / "metrics.json") as f:
        lines = [json.loads(line) for line in f]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1, 2]
    assert torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)["iteration"] == 2
    preds = torch.load(run_dir / "inference" / "instances_predictions.pth", weights_only=False)
    assert sorted(p["image_id"] for p in preds) == [1, 2, 3, 4]  # both ranks' images, each once
