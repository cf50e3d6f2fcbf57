"""Save/load round trips, last_checkpoint, resume, reporting of incompatible keys, PeriodicCheckpointer."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from detlightning.checkpoint import (
    Checkpointer,
    DetectionCheckpointer,
    PeriodicCheckpointer,
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)
from detlightning.utils import comm

from .toy_models import ToyDetector

LOGGER = "detlightning.checkpoint"


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_writes_pth_and_last_checkpoint(tmp_path):
    model = ToyDetector(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.25, momentum=0.9)
    ckpt = DetectionCheckpointer(model, str(tmp_path), optimizer=opt)
    ckpt.save("model_999", iteration=999)

    assert (tmp_path / "last_checkpoint").read_text() == "model_999.pth"
    data = torch.load(tmp_path / "model_999.pth", weights_only=True)
    assert set(data) == {"model", "optimizer", "iteration"}
    assert data["iteration"] == 999
    assert data["optimizer"]["param_groups"][0]["lr"] == 0.25
    assert "pixel_mean" not in data["model"]  # non-persistent buffer
    assert torch.equal(data["model"]["roi_heads.box_predictor.cls_score.weight"],
                       model.roi_heads.box_predictor.cls_score.weight)
    assert ckpt.has_checkpoint()
    assert ckpt.get_checkpoint_file() == os.path.join(str(tmp_path), "model_999.pth")
    assert ckpt.get_all_checkpoint_files() == [os.path.join(str(tmp_path), "model_999.pth")]
    assert not any(p.name.endswith(".tmp") or ".tmp." in p.name for p in tmp_path.iterdir())


def test_roundtrip_restores_model_and_checkpointables(tmp_path, caplog):
    src = ToyDetector(seed=1)
    opt_src = torch.optim.SGD(src.parameters(), lr=0.25)
    DetectionCheckpointer(src, str(tmp_path), optimizer=opt_src).save("model_0000009", iteration=9, note="x")

    dst = ToyDetector(seed=2)
    opt_dst = torch.optim.SGD(dst.parameters(), lr=1.0)
    assert not torch.equal(dst.backbone.bottom_up.stem.conv1.weight, src.backbone.bottom_up.stem.conv1.weight)
    ckpt = DetectionCheckpointer(dst, str(tmp_path), optimizer=opt_dst)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        extra = ckpt.resume_or_load("unused.pth", resume=True)
    _assert_same_state(src, dst)
    assert opt_dst.param_groups[0]["lr"] == 0.25
    assert extra == {"iteration": 9, "note": "x"}
    assert ckpt.incompatible_keys is not None
    assert ckpt.incompatible_keys.missing_keys == []
    assert ckpt.incompatible_keys.unexpected_keys == []
    assert ckpt.incompatible_keys.incorrect_shapes == []
    # pixel_mean / pixel_std are non-persistent: never reported
    assert "not found in the checkpoint" not in caplog.text


def test_resume_false_loads_only_the_model(tmp_path):
    src = ToyDetector(seed=1)
    path = tmp_path / "weights.pth"
    torch.save({"model": src.state_dict(), "iteration": 5}, path)

    dst = ToyDetector(seed=2)
    opt = torch.optim.SGD(dst.parameters(), lr=1.0)
    ckpt = DetectionCheckpointer(dst, str(tmp_path / "out"), optimizer=opt)
    assert not ckpt.has_checkpoint()
    assert ckpt.get_checkpoint_file() == ""
    extra = ckpt.resume_or_load(str(path), resume=True)  # nothing to resume: loads the path
    _assert_same_state(src, dst)
    assert extra == {"iteration": 5}
    assert opt.param_groups[0]["lr"] == 1.0


def test_tag_last_checkpoint_and_resume_picks_it(tmp_path):
    a, b = ToyDetector(seed=1), ToyDetector(seed=2)
    DetectionCheckpointer(a, str(tmp_path)).save("first")
    DetectionCheckpointer(b, str(tmp_path)).save("second")
    dst = ToyDetector(seed=3)
    ckpt = DetectionCheckpointer(dst, str(tmp_path))
    ckpt.tag_last_checkpoint("first.pth")
    ckpt.resume_or_load("", resume=True)
    _assert_same_state(a, dst)
    assert sorted(os.path.basename(f) for f in ckpt.get_all_checkpoint_files()) == ["first.pth", "second.pth"]


def test_save_is_skipped_without_dir_or_on_non_main_process(tmp_path, monkeypatch):
    model = ToyDetector()
    DetectionCheckpointer(model, "").save("m")  # no save_dir: silently nothing
    DetectionCheckpointer(model, str(tmp_path), save_to_disk=False).save("m")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    assert ckpt.save_to_disk is False
    ckpt.save("m")
    assert list(tmp_path.iterdir()) == []


def test_is_main_process_follows_torch_distributed(monkeypatch):
    assert comm.is_main_process()  # not initialised: single process
    monkeypatch.setattr(comm.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(comm.dist, "get_rank", lambda: 1)
    assert not comm.is_main_process()
    monkeypatch.setattr(comm.dist, "get_rank", lambda: 0)
    assert comm.is_main_process()


def test_save_rejects_names_with_directories(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        DetectionCheckpointer(ToyDetector(), str(tmp_path)).save("sub/model")


def test_partial_checkpoint_is_reported_not_fatal(tmp_path, caplog):
    src = ToyDetector(seed=1)
    sd = src.state_dict()
    for k in [k for k in sd if k.startswith("roi_heads.box_predictor.")]:
        del sd[k]
    sd["backbone.bottom_up.res2.0.conv1.weight"] = torch.randn(5, 4, 1, 1)  # model has (4, 4, 1, 1)
    sd["extra_head.fc.weight"] = torch.zeros(2, 2)
    sd["extra_head.fc.bias"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save({"model": sd}, path)

    dst = ToyDetector(seed=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    ckpt = DetectionCheckpointer(dst)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ckpt.load(str(path))

    text = caplog.text
    assert "roi_heads.box_predictor.{bbox_pred, cls_score}.{bias, weight}" in text
    assert "not found in the checkpoint" in text
    assert "not used by the model" in text and "extra_head.fc.{bias, weight}" in text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "backbone.bottom_up.res2.0.conv1.weight" in w and "(5, 4, 1, 1)" in w and "(4, 4, 1, 1)" in w
        for w in warnings
    ), warnings

    inc = ckpt.incompatible_keys
    # the skipped tensor is missing too, as with nn.Module.load_state_dict
    assert sorted(inc.missing_keys) == sorted(
        [f"roi_heads.box_predictor.{m}.{p}" for m in ("bbox_pred", "cls_score") for p in ("weight", "bias")]
        + ["backbone.bottom_up.res2.0.conv1.weight"]
    )
    assert sorted(inc.unexpected_keys) == ["extra_head.fc.bias", "extra_head.fc.weight"]
    assert inc.incorrect_shapes == [("backbone.bottom_up.res2.0.conv1.weight", (5, 4, 1, 1), (4, 4, 1, 1))]
    after = dst.state_dict()
    # skipped and missing keys keep their values; everything else comes from the file
    for key in ("backbone.bottom_up.res2.0.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(after[key], before[key]), key
    stem = "backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(after[stem], src.state_dict()[stem])
    assert torch.equal(after["backbone.bottom_up.stem.conv1.norm.running_mean"],
                       src.state_dict()["backbone.bottom_up.stem.conv1.norm.running_mean"])


def test_load_model_returns_incompatible_keys_namedtuple():
    model = ToyDetector(seed=1)
    sd = {k: v.clone() for k, v in ToyDetector(seed=2).state_dict().items() if "bbox_pred" not in k}
    sd["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(7)
    result = Checkpointer(model)._load_model({"model": sd})
    assert result._fields == ("missing_keys", "unexpected_keys", "incorrect_shapes")
    head = "roi_heads.box_predictor."
    assert sorted(result.missing_keys) == [head + "bbox_pred.bias", head + "bbox_pred.weight", head + "cls_score.bias"]
    assert result.incorrect_shapes == [("roi_heads.box_predictor.cls_score.bias", (7,), (3,))]


def test_ddp_module_prefix_is_stripped(tmp_path):
    src = ToyDetector(seed=1)
    path = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = ToyDetector(seed=2)
    ckpt = DetectionCheckpointer(dst)
    ckpt.load(str(path))
    _assert_same_state(src, dst)
    assert ckpt.incompatible_keys.unexpected_keys == []


def test_load_empty_path_and_missing_file(tmp_path):
    ckpt = DetectionCheckpointer(ToyDetector())
    assert ckpt.load("") == {}
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ckpt.load(str(tmp_path / "nope.pth"))


def test_unknown_checkpointable_name_is_a_key_error(tmp_path):
    model = ToyDetector()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    ckpt.save("m")
    with pytest.raises(KeyError, match="optimizer"):
        ckpt.load(str(tmp_path / "m.pth"), checkpointables=["optimizer"])


def test_shared_module_not_reported_missing(tmp_path, caplog):
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(2, 2)
            self.b = self.a  # the same module under two names

    src, dst = Shared(), Shared()
    path = tmp_path / "shared.pth"
    torch.save({"model": {"a.weight": src.a.weight.detach(), "a.bias": src.a.bias.detach()}}, path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        DetectionCheckpointer(dst).load(str(path))
    assert torch.equal(dst.b.weight, src.a.weight)
    assert "not found in the checkpoint" not in caplog.text


def test_group_messages_format():
    msg = get_missing_parameters_message(
        [
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.box_predictor.cls_score.bias",
            "roi_heads.box_predictor.bbox_pred.weight",
            "roi_heads.box_predictor.bbox_pred.bias",
            "backbone.bottom_up.stem.conv1.weight",
            "pixel_mean",
        ]
    )
    assert msg.splitlines() == [
        "Some model parameters or buffers are not found in the checkpoint:",
        "  roi_heads.box_predictor.{bbox_pred, cls_score}.{bias, weight}",
        "  backbone.bottom_up.stem.conv1.weight",
        "  pixel_mean",
    ]
    msg = get_unexpected_parameters_message(["fc1000.weight", "fc1000.bias", "res2.0.conv1.norm.weight"])
    assert msg.splitlines() == [
        "The checkpoint state_dict contains keys that are not used by the model:",
        "  fc1000.{bias, weight}",
        "  res2.0.conv1.norm.weight",
    ]


def test_periodic_checkpointer(tmp_path):
    model = ToyDetector()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    periodic = PeriodicCheckpointer(ckpt, period=3, max_iter=10, max_to_keep=2)
    for it in range(10):
        periodic.step(it, lr=0.1)
    # saved at iterations 2, 5, 8 (every 3rd) and at 9 (final); the oldest periodic file was deleted
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000005.pth", "model_0000008.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(tmp_path / "model_0000008.pth", weights_only=True)["iteration"] == 8
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 9 and final["lr"] == 0.1


def test_periodic_checkpointer_without_limit_and_prefix(tmp_path):
    ckpt = DetectionCheckpointer(ToyDetector(), str(tmp_path))
    periodic = PeriodicCheckpointer(ckpt, period=2, file_prefix="net")
    for it in range(5):
        periodic.step(it)
    periodic.save("manual", iteration=42)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["manual.pth", "net_0000001.pth", "net_0000003.pth"]
    with pytest.raises(ValueError):
        PeriodicCheckpointer(ckpt, period=0)
