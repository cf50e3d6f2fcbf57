"""Crash-safe saves (disk full, stale temp files), damaged files named on load, resume from the newest intact
checkpoint, and the load summary (issue 16 items 1, 9, 15)."""
from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from detlightning.checkpoint import CheckpointDamagedError, DetectionCheckpointer, PeriodicCheckpointer
from detlightning.checkpoint import atomic as atomic_mod
from detlightning.checkpoint.atomic import checkpoint_file_problem, remove_stale_temp_files
from detlightning.checkpoint.lightning import find_resume_ckpt

from .toy_models import ToyDetector

LOGGER = "detlightning.checkpoint"


class _DiskFullFile:
    """A real file whose writes fail with ENOSPC once ``budget`` bytes are written (a disk filling up)."""

    def __init__(self, f, budget: int) -> None:
        self._f, self._left = f, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            self._f.write(bytes(memoryview(data).cast("B")[: self._left]))
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_disk_full_during_save_leaves_previous_files_intact(tmp_path, monkeypatch, caplog):
    model = ToyDetector(seed=1)
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    assert len(before) > 1000

    real = atomic_mod._open_for_write
    monkeypatch.setattr(atomic_mod, "_open_for_write", lambda path: _DiskFullFile(real(path), 1000))
    with torch.no_grad():
        model.backbone.fpn_lateral2.weight.add_(1.0)
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(OSError) as err:
        ckpt.save("model_0000002", iteration=2)
    assert err.value.errno == errno.ENOSPC
    assert "model_0000002.pth failed" in caplog.text and "previous checkpoints are unchanged" in caplog.text
    # overwriting an existing checkpoint fails the same way and keeps its old bytes
    with pytest.raises(OSError):
        ckpt.save("model_0000001", iteration=1)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000001.pth"]  # no temp file, no truncated file
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    # the tag itself is written atomically: a failed write keeps the old tag
    monkeypatch.setattr(atomic_mod, "_open_for_write", lambda path: _DiskFullFile(real(path), 3))
    with pytest.raises(OSError):
        ckpt.tag_last_checkpoint("model_0000009.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _files(tmp_path) == ["last_checkpoint", "model_0000001.pth"]

    monkeypatch.setattr(atomic_mod, "_open_for_write", real)
    fresh = ToyDetector(seed=5)
    assert DetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("")["iteration"] == 1
    assert not torch.equal(fresh.backbone.fpn_lateral2.weight, model.backbone.fpn_lateral2.weight)


def test_disk_full_during_lightning_save_keeps_last_ckpt(tmp_path, monkeypatch):
    from detlightning.engine.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.arange(1000.0)}}, path)
    before = path.read_bytes()
    real = atomic_mod._open_for_write
    monkeypatch.setattr(atomic_mod, "_open_for_write", lambda p: _DiskFullFile(real(p), 1000))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 6, "state_dict": {"w": torch.zeros(1000)}}, path)
    assert _files(tmp_path) == ["last.ckpt"] and path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 4


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, caplog):
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f"model_0000003.pth.tmp.{dead}"
    stale.write_bytes(b"\x00" * 4096)
    stale_ckpt = tmp_path / f"last.ckpt.tmp.{dead}"
    stale_ckpt.write_bytes(b"PK")
    running = tmp_path / f"model_0000004.pth.tmp.{alive}"  # a writer that still runs: not ours to delete
    running.write_bytes(b"x")
    (tmp_path / "notes.tmp.txt").write_text("user file")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        DetectionCheckpointer(ToyDetector(), str(tmp_path))
    assert not stale.exists() and not stale_ckpt.exists()
    assert running.exists() and (tmp_path / "notes.tmp.txt").exists()
    assert str(stale) in caplog.text and "unfinished checkpoint" in caplog.text
    # a checkpointer that does not write (other ranks, loading only) leaves the folder alone
    stale.write_bytes(b"\x00")
    DetectionCheckpointer(ToyDetector(), str(tmp_path), save_to_disk=False)
    assert stale.exists()
    assert remove_stale_temp_files(tmp_path) == [str(stale)]


def test_lightning_checkpoint_io_cleans_folder_at_first_save(tmp_path):
    from detlightning.engine.checkpoint_io import AtomicCheckpointIO

    stale = tmp_path / f"last.ckpt.tmp.{_dead_pid()}"
    stale.write_bytes(b"\x00" * 100)
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    assert _files(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_resume_skips_damaged_last_checkpoint(tmp_path, caplog, damage):
    src = ToyDetector(seed=1)
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    periodic = PeriodicCheckpointer(DetectionCheckpointer(src, str(tmp_path), optimizer=opt), period=1)
    periodic.step(0)
    want = {k: v.clone() for k, v in src.state_dict().items()}
    with torch.no_grad():
        src.backbone.fpn_lateral2.weight.add_(1.0)
    periodic.step(1)
    last = tmp_path / "model_0000001.pth"
    assert (tmp_path / "last_checkpoint").read_text() == last.name
    data = last.read_bytes()
    last.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"version https://git-lfs\n"}[damage])

    dst = ToyDetector(seed=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        extra = DetectionCheckpointer(dst, str(tmp_path), optimizer=torch.optim.SGD(dst.parameters(), lr=1.0)) \
            .resume_or_load("")
    assert extra["iteration"] == 0
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in want.items())
    assert f"Checkpoint {last} is damaged" in caplog.text
    assert "newest intact checkpoint" in caplog.text and "model_0000000.pth" in caplog.text

    (tmp_path / "model_0000000.pth").write_bytes(b"")
    with pytest.raises(CheckpointDamagedError, match="cannot resume.*model_0000001.pth"):
        DetectionCheckpointer(ToyDetector(), str(tmp_path)).resume_or_load("")


@pytest.mark.parametrize("suffix", [".pth", ".pkl", ".ckpt"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_damaged_file_is_named_on_load(tmp_path, suffix, damage):
    src = ToyDetector(seed=1)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pkl":
        blob = pickle.dumps({"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "t"})
    else:
        torch.save({"model": src.state_dict()}, path)
        blob = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": blob[: len(blob) * 2 // 3], "text": b"<html>404</html>\n"}[damage])
    with pytest.raises(CheckpointDamagedError) as err:
        DetectionCheckpointer(ToyDetector()).load(str(path))
    assert str(path) in str(err.value) and "damaged" in str(err.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_checkpoint_file_problem(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.arange(100000)}, good)
    assert checkpoint_file_problem(good) is None
    data = bytearray(good.read_bytes())
    bad = tmp_path / "flip.pth"
    i = data.find(b"\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00")  # inside the tensor bytes
    data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert "CRC" in checkpoint_file_problem(bad)
    assert "truncated" in checkpoint_file_problem(_write(tmp_path / "cut.pth", bytes(data[: len(data) // 2])))
    no_crc = tmp_path / "no_crc.pth"  # torch can skip the CRCs (all 0): not a sign of damage
    from torch.utils.serialization import config

    crc_before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save({"a": torch.arange(100000)}, no_crc)
    finally:
        config.save.compute_crc32 = crc_before
    assert zipfile.ZipFile(no_crc).testzip() is not None  # what a plain CRC check would call damaged
    assert checkpoint_file_problem(no_crc) is None
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_file_problem(legacy) is None


def test_load_summary_warns_and_nothing_matching_raises(tmp_path, caplog):
    src = ToyDetector(seed=1)
    sd = dict(src.state_dict())
    sd.pop("roi_heads.box_predictor.bbox_pred.bias")
    sd["roi_heads.mask_head.predictor.weight"] = torch.ones(2)
    sd["backbone.fpn_lateral2.weight"] = torch.ones(7, 7)
    torch.save({"model": sd}, tmp_path / "partial.pth")
    dst = ToyDetector(seed=2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        DetectionCheckpointer(dst).load(str(tmp_path / "partial.pth"))
    summary = [r for r in caplog.records if "Loaded" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    n = len(src.state_dict())
    assert summary[0].getMessage() == (
        f"Loaded {n - 2} of {n} tensors from {tmp_path / 'partial.pth'}; 2 missing, 1 unexpected, "
        "1 skipped for their shape"
    )
    # detectron2's detailed per-key report is still there
    assert "roi_heads.box_predictor.bbox_pred.bias" in caplog.text and "roi_heads.mask_head.predictor" in caplog.text

    caplog.clear()
    torch.save({"model": src.state_dict()}, tmp_path / "full.pth")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        DetectionCheckpointer(ToyDetector()).load(str(tmp_path / "full.pth"))
    assert "Loaded" not in caplog.text  # a complete match is quiet

    other = {"head.fc1.weight": torch.ones(3, 3), "head.fc2.weight": torch.ones(3)}
    torch.save({"model": other}, tmp_path / "other_arch.pth")
    fresh = ToyDetector(seed=3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=rf"other_arch.pth matches none of the model's {n} tensors.*another arch"):
        DetectionCheckpointer(fresh).load(str(tmp_path / "other_arch.pth"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


def test_find_resume_ckpt_falls_back_to_newest_intact(tmp_path, caplog):
    from detlightning.engine.defaults import find_resume_checkpoint
    from detlightning.engine.lazy import _resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    assert find_resume_ckpt(str(ckpts)) is None
    ckpts.mkdir()
    for step in (2, 4):
        torch.save({"global_step": step}, ckpts / f"model_{step:07d}.ckpt")
        os.utime(ckpts / f"model_{step:07d}.ckpt", (1000 + step, 1000 + step))
    last = ckpts / "last.ckpt"
    torch.save({"global_step": 4}, last)
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "train": {"output_dir": str(ckpts)}})
    assert find_resume_checkpoint(cfg) == str(last) and _resume_checkpoint(cfg) == str(last)

    last.write_bytes(b"")  # what a kill during a non-atomic save left behind
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(cfg) == str(ckpts / "model_0000004.ckpt")
    assert f"Checkpoint {last} is damaged" in caplog.text and "empty" in caplog.text
    (ckpts / "model_0000004.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert _resume_checkpoint(cfg) == str(ckpts / "model_0000002.ckpt")
    (ckpts / "model_0000002.ckpt").unlink()
    with pytest.raises(CheckpointDamagedError, match="every .ckpt file in .*checkpoints is damaged"):
        find_resume_checkpoint(cfg)
