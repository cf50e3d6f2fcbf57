"""scripts/plain_train_net.py: a plain-PyTorch loop (no Lightning) that trains, checkpoints, resumes and evaluates.

One module fixture runs the script three times on a tiny Mask R-CNN and the built-in shapes data: 4 iterations,
then ``--resume`` up to 6, then ``--eval-only`` of the final checkpoint in another output dir.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests._scripts import load_script
from tests.engine.conftest import tiny_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "plain_train_net.py"

# Schedule of the test runs (hand-computed LRs below follow from these values).
BASE_LR = 0.01
WARMUP_FACTOR = 0.001
WARMUP_ITERS = 2
STEP = 5  # beyond max_iter=4 in the first run (ignored there), reached in the resumed run (max_iter=6)
GAMMA = 0.1


def _overrides(shapes_root: Path, output_dir: Path, **extra: Any) -> list[str]:
    """``tiny_overrides`` with this test's solver/writer settings (same keys replaced, not repeated)."""
    mine = {
        "solver.max_iter": 4,
        "solver.base_lr": BASE_LR,
        "solver.warmup_factor": WARMUP_FACTOR,
        "solver.warmup_iters": WARMUP_ITERS,
        "solver.steps": f"[{STEP}]",
        "solver.gamma": GAMMA,
        "solver.checkpoint_period": 2,
        "solver.eval_period": 4,
        "callbacks.metrics_writer.period": 1,  # one metrics.json line per iteration
        # an untrained model scores below the default 0.05: keep every detection so AP is a number
        "model.roi_heads.score_thresh_test": 0.0,
        "paths.output_dir": output_dir,
        **extra,
    }
    kept = [o for o in tiny_overrides(shapes_root) if o.split("=", 1)[0] not in mine]
    return kept + [f"{k}={v}" for k, v in mine.items()]


def _run(args: list[str], cwd: Path, wrapper: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(SCRIPT), *args] if wrapper is None else [sys.executable, "-c", wrapper, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


# Runs the script as __main__ in this interpreter, then reports which Lightning modules got imported.
_NO_LIGHTNING_WRAPPER = f"""
import runpy, sys
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
print("LIGHTNING_MODULES=" + ",".join(loaded))
"""


def _copypaste(stdout: str) -> dict[str, dict[str, float]]:
    """The last ``print_csv_format`` block per task: ``{"bbox": {"AP": ..., ...}, "segm": {...}}``."""
    lines = [m.group(1).strip() for m in re.finditer(r"copypaste: (.*)", stdout)]
    out: dict[str, dict[str, float]] = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            out[line[len("Task: "):]] = {n: float(v) for n, v in zip(names, values)}
    return out


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _lr(iteration: int, max_iter: int) -> float:
    """Hand-computed WarmupMultiStepLR: linear warmup from WARMUP_FACTOR over WARMUP_ITERS, GAMMA from STEP on
    (STEP only counts when it is <= max_iter)."""
    decay = GAMMA if (STEP <= max_iter and iteration >= STEP) else 1.0
    if iteration < WARMUP_ITERS:
        alpha = iteration / WARMUP_ITERS
        return BASE_LR * decay * (WARMUP_FACTOR * (1 - alpha) + alpha)
    return BASE_LR * decay


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("plain_train_net")
    shapes, out, eval_out = root / "shapes", root / "out", root / "eval"
    first = _run(_overrides(shapes, out), cwd=root, wrapper=_NO_LIGHTNING_WRAPPER)
    metrics_first = _metrics(out / "metrics.json")
    final_first = torch.load(out / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)
    resumed = _run(["--resume", *_overrides(shapes, out, **{"solver.max_iter": 6})], cwd=root)
    final_weights = out / "checkpoints" / "model_final.pth"
    evaluated = _run(
        ["--eval-only", *_overrides(shapes, eval_out, **{"model.weights": final_weights})],
        cwd=root,
    )
    return dict(
        out=out, eval_out=eval_out, first=first, resumed=resumed, evaluated=evaluated,
        metrics_first=metrics_first, final_first=final_first,
    )


def test_trains_without_lightning_and_writes_metrics(runs: dict[str, Any]) -> None:
    assert "LIGHTNING_MODULES=\n" in runs["first"].stdout, runs["first"].stdout[-2000:]
    lines = runs["metrics_first"]
    assert [line["iteration"] for line in lines] == [0, 1, 2, 3]
    for line in lines:
        for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "time",
                    "data_time"):
            assert math.isfinite(line[key]), (key, line)
        assert line["total_loss"] > 0
    for line in lines:
        assert line["lr"] == pytest.approx(_lr(line["iteration"], 4), rel=1e-6), line
    assert [line["lr"] for line in lines] == pytest.approx([1e-5, 0.005005, 0.01, 0.01], rel=1e-6)
    assert list((runs["out"] / "tensorboard").glob("events.out.tfevents.*"))
    assert (runs["out"] / "config.yaml").is_file()


def test_evaluates_with_coco_and_logs_results(runs: dict[str, Any]) -> None:
    printed = _copypaste(runs["first"].stdout)
    assert set(printed) == {"bbox", "segm"}
    assert set(printed["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= printed["bbox"]["AP"] <= 100.0
    # eval_period=4 with max_iter=4: one evaluation, at the last iteration, recorded in metrics.json
    last = runs["metrics_first"][-1]
    assert last["bbox/AP"] == pytest.approx(printed["bbox"]["AP"], abs=1e-4)
    assert last["segm/AP"] == pytest.approx(printed["segm"]["AP"], abs=1e-4)
    assert not any("bbox/AP" in line for line in runs["metrics_first"][:-1])
    results = json.loads((runs["out"] / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])


def test_checkpoints(runs: dict[str, Any]) -> None:
    ckpt_dir = runs["out"] / "checkpoints"
    for name in ("model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth"):
        assert (ckpt_dir / name).is_file(), sorted(p.name for p in ckpt_dir.iterdir())
    assert (ckpt_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    first = runs["final_first"]
    assert {"model", "optimizer", "scheduler", "iteration"} <= set(first)
    assert first["iteration"] == 3
    assert first["scheduler"]["last_epoch"] == 4  # stepped once per iteration
    assert "roi_heads.box_predictor.cls_score.weight" in first["model"]
    early = torch.load(ckpt_dir / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert early["iteration"] == 1


def test_resume_continues_iteration_and_schedule(runs: dict[str, Any]) -> None:
    lines = _metrics(runs["out"] / "metrics.json")
    n_first = len(runs["metrics_first"])
    assert lines[:n_first] == runs["metrics_first"]  # appended, not rewritten
    new = lines[n_first:]
    assert [line["iteration"] for line in new] == [4, 5]
    # iteration 4 runs at the LR the optimizer state carried over; 5 is past the step at 5 of the new schedule
    assert [line["lr"] for line in new] == pytest.approx([_lr(4, 6), _lr(5, 6)], rel=1e-6)
    assert [line["lr"] for line in new] == pytest.approx([0.01, 0.001], rel=1e-6)
    final = torch.load(runs["out"] / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 5
    assert final["scheduler"]["last_epoch"] == 6
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(final["model"][key], runs["final_first"]["model"][key])  # training went on
    # the resumed run evaluated at its last iteration
    assert "bbox/AP" in new[-1] and "segm/AP" in new[-1]


def test_eval_only_reproduces_final_evaluation(runs: dict[str, Any]) -> None:
    trained = _copypaste(runs["resumed"].stdout)
    evaluated = _copypaste(runs["evaluated"].stdout)
    assert set(evaluated) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-4, nan_ok=True), task
    # same weights, same predictions (stronger than equal AP)
    ours = json.loads((runs["out"] / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
    theirs = json.loads((runs["eval_out"] / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert not (runs["eval_out"] / "metrics.json").exists()  # evaluation only: no training metrics


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("plain_train_net")


def test_nonfinite_loss_is_named(script: ModuleType) -> None:
    ok = script.check_losses_finite({"loss_a": torch.tensor(1.5), "loss_b": torch.tensor([0.25, 0.25])}, 3)
    assert ok == {"loss_a": 1.5, "loss_b": 0.5}
    with pytest.raises(FloatingPointError, match=r"iteration=7: loss_b, loss_c") as info:
        script.check_losses_finite(
            {"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float("nan")), "loss_c": torch.tensor(float("inf"))}, 7
        )
    assert "loss_a" in str(info.value)  # the whole loss dict is shown


def test_command_line(script: ModuleType) -> None:
    args = script.parse_args(["--resume", "--eval-only", "model=mask_rcnn", "solver.max_iter=3"])
    assert args.resume and args.eval_only
    assert args.opts == ["model=mask_rcnn", "solver.max_iter=3"]


def test_detectron2_yaml_with_command_line_overrides(script: ModuleType, tmp_path: Path) -> None:
    base = tmp_path / "Base-Tiny.yaml"
    base.write_text("MODEL:\n  MASK_ON: True\n  ROI_HEADS:\n    NUM_CLASSES: 7\nSOLVER:\n  BASE_LR: 0.05\n")
    child = tmp_path / "tiny.yaml"
    child.write_text('_BASE_: "Base-Tiny.yaml"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 5\nSOLVER:\n  MAX_ITER: 123\n')
    cfg = script.build_cfg([f"d2_config={child}", "solver.base_lr=0.01", f"paths.output_dir={tmp_path / 'o'}"])
    assert cfg.model.roi_heads.num_classes == 5  # the child file over its _BASE_
    assert cfg.model.mask_on is True  # from the _BASE_
    assert cfg.solver.max_iter == 123
    assert cfg.solver.base_lr == 0.01  # the command line over the file
    assert cfg.paths.output_dir == str(tmp_path / "o")
    assert script.build_cfg([]).paths.output_dir == os.path.abspath("output")
