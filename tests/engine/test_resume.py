"""Resume (issue 16, items 13-14): a run killed with SIGKILL and resumed ends with the weights of an uninterrupted
run, bit for bit, and metrics.json has each iteration once; ``resume=true`` on a finished run trains nothing."""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.data import samplers
from detlightning.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detlightning.engine.callbacks import _truncate_metrics

from .conftest import REPO_ROOT, tiny_overrides


def _iterations(out: Path) -> list[int]:
    """The iterations of metrics.json's training lines (an evaluation has a line of its own at the iteration it
    followed)."""
    with open(out / "metrics.json") as f:
        return [r["iteration"] for r in map(json.loads, f) if "total_loss" in r]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def _run_overrides(shapes_root: Path, *extra: str) -> list[str]:
    return tiny_overrides(shapes_root, "faster_rcnn") + [
        "solver.max_iter=6", "solver.steps=[4]", "solver.checkpoint_period=2", "callbacks.metrics_writer.period=1",
        "datasets.test=[]", "logger=csv", *extra,
    ]


# ------------------------------------------------------------------------------------------------- samplers
def _draws(sampler: TrainingSampler, n: int) -> list[tuple[int, float, float]]:
    """(index, numpy draw, torch draw) right after each yielded index: what a mapper would draw for it."""
    return [(i, float(np.random.rand()), float(torch.rand(()))) for i in itertools.islice(sampler, n)]


def test_sampler_start_skips_consumed_indices_and_seeds_per_position() -> None:
    full = _draws(TrainingSampler(5, seed=3), 12)  # more than two epochs
    resumed = TrainingSampler(5, seed=3)
    resumed.load_state_dict({"start": 7})
    assert resumed.state_dict() == {"start": 7, "seed": 3}
    # the same indices, and the same random draws for each of them, whatever ran before
    np.random.seed(123)
    assert _draws(resumed, 5) == full[7:]
    # rank 1 of 2 continues its own half of the stream
    rank1 = [i for i, _, _ in _draws(TrainingSampler(5, seed=3, rank=1, world_size=2), 6)]
    later = TrainingSampler(5, seed=3, rank=1, world_size=2)
    later.load_state_dict({"start": 2})
    assert [i for i, _, _ in _draws(later, 4)] == rank1[2:]
    with pytest.raises(ValueError, match="start"):
        later.load_state_dict({"start": -1})


def test_repeat_factor_sampler_resumes() -> None:
    factors = torch.tensor([0.5, 1.0, 2.5, 1.7])
    full = list(itertools.islice(RepeatFactorTrainingSampler(factors, seed=1), 20))
    resumed = RepeatFactorTrainingSampler(factors, seed=1)
    resumed.load_state_dict({"start": 9})
    assert list(itertools.islice(resumed, 11)) == full[9:]


def test_sampler_without_reseed_leaves_rngs_alone() -> None:
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    list(itertools.islice(TrainingSampler(4, seed=0, reseed=False), 6))
    assert np.random.rand() == expected


def test_pending_start_goes_to_the_next_sampler_only() -> None:
    samplers.set_pending_start(3)
    try:
        assert TrainingSampler(4, seed=0).state_dict()["start"] == 3
        assert TrainingSampler(4, seed=0).state_dict()["start"] == 0
    finally:
        samplers.set_pending_start(None)


# ------------------------------------------------------------------------------------------------ metrics
def test_truncate_metrics_drops_later_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    lines = [{"iteration": i, "total_loss": i / 10} for i in range(5)] + [{"iteration": 2, "bbox/AP": 1.5}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"iterat')
    # resuming after 3 iterations: iterations 3 and 4 and the torn line go; the evaluation after 3 iterations
    # (recorded at iteration 2) stays
    assert _truncate_metrics(str(path), 3) == (3, 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:3] + lines[5:]
    assert _truncate_metrics(str(path), 3) == (0, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


# --------------------------------------------------------------------------------------------- end to end
def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    differ = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, differ


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
    workers: int, shapes_root: Path, tmp_path: Path, train_script: ModuleType
) -> None:
    """6 iterations in one go vs. SIGKILL after iteration 3 (last checkpoint at 2) + ``resume=true``: every final
    tensor is equal. With 0 workers, with aspect-ratio grouping (all shapes images are square: one aspect group);
    with 2 workers, without it (see ``ResumeState``) and with an evaluation every 2 iterations."""
    extra = [f"dataloader.num_workers={workers}"]
    if workers:
        extra += ["dataloader.aspect_ratio_grouping=false", "datasets.test=[shapes_val]", "solver.eval_period=2"]
    full = tmp_path / "full"
    train_script.run(compose(_run_overrides(shapes_root, *extra, f"paths.output_dir={full}")))

    killed_dir = tmp_path / "killed"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *_run_overrides(shapes_root, *extra),
           f"hydra.run.dir={killed_dir}", "+callbacks.kill._target_=tests.engine._kill.KillAtStep",
           "+callbacks.kill.step=3", "+callbacks.kill.sigkill=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    killed = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    assert not (killed_dir / "checkpoints" / "model_final.pth").exists()
    assert _iterations(killed_dir) == [0, 1, 2]

    train_script.run(compose(_run_overrides(shapes_root, *extra, f"paths.output_dir={killed_dir}", "resume=true")))
    _assert_same_weights(_weights(full), _weights(killed_dir))
    # one training line per iteration, none repeated (evaluations have lines of their own)
    expected = [0, 1, 2, 3, 4, 5]
    assert _iterations(full) == _iterations(killed_dir) == expected


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_on_two_ddp_ranks(shapes_root: Path, tmp_path: Path) -> None:
    """The same on 2 CPU processes (trainer=ddp, 2 images per rank): each rank's sampler position and RNG states
    come back (the checkpoint holds both ranks')."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "dataloader.ims_per_batch=4"]
    script = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *_run_overrides(shapes_root, *ddp)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(script + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
                              env=env)

    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run(f"hydra.run.dir={full}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    kill = run(f"hydra.run.dir={killed}", "+callbacks.kill._target_=tests.engine._kill.KillAtStep",
               "+callbacks.kill.step=3")
    assert kill.returncode == 17, (kill.stdout + kill.stderr)[-3000:]
    state = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ranks = state["callbacks"]["ResumeState"]["ranks"]
    assert [r["consumed"] for r in ranks] == [4, 4]  # 2 iterations x 2 images, per rank
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    resumed = run(f"hydra.run.dir={killed}", "resume=true")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    _assert_same_weights(_weights(full), _weights(killed))
    assert _iterations(killed) == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_resume_of_a_finished_run_trains_nothing_unless_max_iter_grows(
    shapes_root: Path, tmp_path: Path, train_script: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    base = tiny_overrides(shapes_root, "faster_rcnn") + [
        f"paths.output_dir={out}", "solver.max_iter=3", "solver.checkpoint_period=2", "solver.steps=[2]",
        "callbacks.metrics_writer.period=1", "logger=csv",
    ]
    first = train_script.run(compose(base))
    ckpts = out / "checkpoints"
    # last.ckpt is brought up to the end of training although 3 is no multiple of the checkpoint period
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    final = _weights(out)
    for k, v in final.items():
        assert torch.equal(last["state_dict"][f"model.{k}"], v), k

    final_bytes, metrics_bytes = (ckpts / "model_final.pth").read_bytes(), (out / "metrics.json").read_bytes()
    with caplog.at_level(logging.WARNING, logger="detlightning.engine.defaults"):
        again = train_script.run(compose(base + ["resume=true"]))
    assert "run is complete" in caplog.text and "solver.max_iter=3" in caplog.text
    assert (ckpts / "model_final.pth").read_bytes() == final_bytes  # not retrained, not rewritten
    assert (out / "metrics.json").read_bytes() == metrics_bytes
    # the evaluation of the finished weights (one eval, the same numbers as the end of training)
    assert again["shapes_val"]["bbox"]["AP"] == pytest.approx(first["shapes_val"]["bbox"]["AP"])

    # a raised max_iter continues from iteration 3
    train_script.run(compose(base + ["resume=true", "solver.max_iter=4"]))
    assert torch.load(ckpts / "model_final.pth", weights_only=True)["iteration"] == 3
    # one training line per iteration; the evaluations after 3 and 4 iterations are recorded at 2 and 3
    assert _iterations(out) == [0, 1, 2, 3]
    records = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    evaluations = [r["iteration"] for r in records if "bbox/AP" in r]
    assert evaluations == [2, 3]
