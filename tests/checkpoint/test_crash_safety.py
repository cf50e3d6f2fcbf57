"""Real process deaths during a save: SIGKILL in the middle of writing a 32 MiB checkpoint (with $TMPDIR on
another file system) and a write refused by the OS (file-size limit) leave no truncated checkpoint, the previous
ones intact, and a folder that resumes (issue 16 items 1 and 15)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.checkpoint.atomic import checkpoint_file_problem
from detlightning.checkpoint.lightning import find_resume_ckpt

from ._save_loop import BigModel

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other_tmpdir(tmp_path):
    """A $TMPDIR for the child on another file system than tmp_path when possible (/dev/shm is a tmpfs)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        d = shm / f"detl-{uuid.uuid4().hex}"
    else:
        d = tmp_path / "other_tmp"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(tmpdir: Path) -> dict[str, str]:
    return dict(os.environ, TMPDIR=str(tmpdir), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


def _kill_mid_save(mode: str, directory: Path, env: dict[str, str], ready: str) -> Path:
    """Run the save loop until ``ready`` exists, then SIGKILL it while one of its temp files is being written;
    returns that temp file. Retries when the save finished between seeing the file and the kill."""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "tests.checkpoint._save_loop", mode, str(directory)],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not (directory / ready).exists():
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the child never finished its first save"
                time.sleep(0.01)
            suffix = f".tmp.{proc.pid}"
            while True:
                partial = [p for p in directory.iterdir() if p.name.endswith(suffix) and p.stat().st_size > 0]
                if partial:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                assert time.monotonic() < deadline, "no save in progress seen"
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        left = [p for p in directory.iterdir() if p.name.endswith(suffix)]
        if left:
            return left[0]
    raise AssertionError("could not kill the child in the middle of a save in 5 tries")


def _staged_files(tmpdir: Path) -> list[Path]:
    """Files of checkpoint size (>= 1 MiB) under ``tmpdir``: a save staged there instead of in place."""
    return [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size >= 1 << 20]


def _assert_all_intact(directory: Path, suffix: str) -> list[Path]:
    files = sorted(directory.glob(f"*{suffix}"))
    assert files
    for p in files:
        assert checkpoint_file_problem(p) is None, p
        torch.load(p, map_location="cpu", weights_only=False)  # every byte is there
    return files


@pytest.mark.slow
def test_kill_during_pth_save_leaves_no_truncated_file_and_resumes(tmp_path, other_tmpdir):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    leftover = _kill_mid_save("pth", ckpts, _env(other_tmpdir), ready="last_checkpoint")
    assert leftover.name.startswith("model_") and ".pth.tmp." in leftover.name  # the kill hit a save mid-way
    assert _staged_files(other_tmpdir) == []  # nothing was staged in $TMPDIR
    files = _assert_all_intact(ckpts, ".pth")
    last = ckpts / (ckpts / "last_checkpoint").read_text()
    assert last in files

    model = BigModel()
    ckpt = DetectionCheckpointer(model, str(ckpts), save_to_disk=True)  # starting in the folder cleans up
    assert not leftover.exists()
    iteration = ckpt.resume_or_load("")["iteration"]
    assert last.name == f"model_{iteration:07d}.pth"
    assert torch.all(model.head.weight == float(iteration))


@pytest.mark.slow
def test_kill_during_lightning_ckpt_save_leaves_no_truncated_file_and_resumes(tmp_path, other_tmpdir):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    env = _env(other_tmpdir)
    leftover = _kill_mid_save("ckpt", ckpts, env, ready="last.ckpt")
    assert ".ckpt.tmp." in leftover.name
    assert _staged_files(other_tmpdir) == []
    _assert_all_intact(ckpts, ".ckpt")

    found = find_resume_ckpt(str(ckpts))
    assert found == str(ckpts / "last.ckpt")
    step = torch.load(found, map_location="cpu", weights_only=False)["global_step"]
    resumed = subprocess.run([sys.executable, "-m", "tests.checkpoint._save_loop", "resume", str(ckpts), found],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resumed from step {step} to {step + 1}" in resumed.stdout
    assert not leftover.exists()  # the first save of the resumed run cleaned the folder
    _assert_all_intact(ckpts, ".ckpt")


def test_write_refused_by_the_os_keeps_previous_checkpoint(tmp_path):
    """A real failing write (RLIMIT_FSIZE: the OS refuses to grow a file past 1 MiB, as a full disk would)."""
    src = torch.nn.Linear(2, 2)
    DetectionCheckpointer(src, str(tmp_path), save_to_disk=True).save("model_0000000", iteration=0)
    before = (tmp_path / "model_0000000.pth").read_bytes()
    run = subprocess.run([sys.executable, "-m", "tests.checkpoint._save_loop", "fsize", str(tmp_path)],
                         cwd=REPO_ROOT, env=_env(Path(os.environ.get("TMPDIR", "/tmp"))), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert run.stdout.count("failed: [Errno 27] File too large") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "model_0000000.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
