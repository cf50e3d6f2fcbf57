"""Restricted loading: only arrays/tensors and plain containers unless the user opts in."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.checkpoint.safe_pickle import ALLOW_UNSAFE_PICKLE_ENV, load_pickle

from .toy_models import ToyDetector


class CustomBlob:
    """A user class: refused by the safe loaders."""

    def __init__(self, tag: str) -> None:
        self.tag = tag


class RunsCommand:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _zoo_dict(model: torch.nn.Module, **extra) -> dict:
    return {"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "test", **extra}


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch):
    monkeypatch.delenv(ALLOW_UNSAFE_PICKLE_ENV, raising=False)


def test_pkl_with_os_system_is_refused_and_named(tmp_path):
    marker = tmp_path / "pwned"  # the payload would create it if it ever ran
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        f.write(pickle.dumps({"model": {}, "__author__": "x", "payload": RunsCommand(f"touch '{marker}'")}))
    with pytest.raises(pickle.UnpicklingError) as err:
        DetectionCheckpointer(ToyDetector()).load(str(path))
    msg = str(err.value)
    assert f"{os.system.__module__}.system" in msg or "os.system" in msg
    assert "allow_unsafe_pickle=True" in msg and ALLOW_UNSAFE_PICKLE_ENV in msg
    assert not marker.exists()
    # the file is a real payload: plain pickle (the opt-in) does run it (then finds no weights in it)
    with pytest.raises(ValueError, match="matches none of the model's"):
        DetectionCheckpointer(ToyDetector(), allow_unsafe_pickle=True).load(str(path))
    assert marker.exists()


def test_pkl_with_custom_class_refused_then_allowed_by_opt_in(tmp_path):
    src = ToyDetector(seed=1)
    path = tmp_path / "custom.pkl"
    with open(path, "wb") as f:
        pickle.dump(_zoo_dict(src, meta=CustomBlob("hello")), f)
    with pytest.raises(pickle.UnpicklingError, match=r"test_safe_pickle\.CustomBlob"):
        DetectionCheckpointer(ToyDetector(seed=2)).load(str(path))

    dst = ToyDetector(seed=2)
    extra = DetectionCheckpointer(dst, allow_unsafe_pickle=True).load(str(path))
    assert isinstance(extra["meta"], CustomBlob) and extra["meta"].tag == "hello"
    assert torch.equal(dst.backbone.bottom_up.stem.conv1.weight, src.backbone.bottom_up.stem.conv1.weight)


def test_env_var_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "custom.pkl"
    with open(path, "wb") as f:
        pickle.dump(_zoo_dict(ToyDetector(seed=1), meta=CustomBlob("env")), f)
    monkeypatch.setenv(ALLOW_UNSAFE_PICKLE_ENV, "1")
    assert DetectionCheckpointer(ToyDetector(seed=2)).load(str(path))["meta"].tag == "env"
    # an explicit False wins over the environment
    with pytest.raises(pickle.UnpicklingError):
        DetectionCheckpointer(ToyDetector(seed=2), allow_unsafe_pickle=False).load(str(path))


def test_pth_with_custom_class_refused_then_allowed(tmp_path, monkeypatch):
    src = ToyDetector(seed=1)
    path = tmp_path / "custom.pth"
    torch.save({"model": src.state_dict(), "meta": CustomBlob("pth")}, path)
    with pytest.raises(pickle.UnpicklingError) as err:
        DetectionCheckpointer(ToyDetector(seed=2)).load(str(path))
    assert "CustomBlob" in str(err.value) and "allow_unsafe_pickle=True" in str(err.value)

    monkeypatch.setenv(ALLOW_UNSAFE_PICKLE_ENV, "1")
    dst = ToyDetector(seed=2)
    assert DetectionCheckpointer(dst).load(str(path))["meta"].tag == "pth"
    assert torch.equal(dst.roi_heads.box_predictor.bbox_pred.weight, src.roi_heads.box_predictor.bbox_pred.weight)


def test_plain_containers_and_numpy_types_are_allowed(tmp_path):
    value = {
        "od": OrderedDict(a=np.arange(3, dtype=np.int64)),
        "list": [np.float32(1.5), (1, 2.0, "s", None, True)],
        "set": {1, 2},
        "fs": frozenset({"x"}),
        "bytes": b"\x00\xff",
        "f16": np.ones((2, 2), np.float16),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    }
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        got = load_pickle(path)
        assert got["set"] == {1, 2} and got["fs"] == frozenset({"x"}) and got["bytes"] == b"\x00\xff"
        assert isinstance(got["od"], OrderedDict) and got["od"]["a"].tolist() == [0, 1, 2]
        assert got["list"][0] == np.float32(1.5) and got["list"][1] == (1, 2.0, "s", None, True)
        assert got["f16"].dtype == np.float16 and got["f16"].sum() == 4
        assert got["fortran"].tolist() == [[0, 1, 2], [3, 4, 5]]


def _py2_str(s: bytes) -> bytes:
    """Python 2 ``str`` as pickled by protocol 2 (SHORT_BINSTRING)."""
    return b"U" + bytes([len(s)]) + s


def _py2_array(values: np.ndarray) -> bytes:
    """A float32 numpy array pickled the way numpy under Python 2 did (numpy.core names, py2 str data)."""
    data = values.astype("<f4").tobytes()
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + _py2_str(b"b") + b"\x87R"
        + b"(K\x01" + b"K" + bytes([values.size]) + b"\x85"
        + b"cnumpy\ndtype\n" + _py2_str(b"f4") + b"K\x00K\x01\x87R"
        + b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89" + _py2_str(data) + b"tb"
    )


def test_python2_latin1_detectron_pickle(tmp_path):
    """A Detectron1-style {"blobs": {...}} file written by Python 2: py2 str bytes, numpy.core and __builtin__."""
    weight = np.array([1.5, -2.0, 3.25, 200.0], np.float32)  # bytes >= 0x80 need latin1 decoding
    raw = (
        b"\x80\x02}q\x00(" + _py2_str(b"blobs") + b"}(" + _py2_str(b"fc_w") + _py2_array(weight)
        + _py2_str(b"fc_w_momentum") + _py2_array(np.zeros(4, np.float32)) + b"u"
        + _py2_str(b"tags") + b"c__builtin__\nset\n]" + _py2_str(b"x") + b"a\x85R" + b"u."
    )
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)
    data = load_pickle(path)
    assert data["tags"] == {"x"}
    np.testing.assert_array_equal(data["blobs"]["fc_w"], weight)

    model = torch.nn.Module()
    model.fc = torch.nn.Module()
    model.fc.register_buffer("weight", torch.zeros(4))
    ckpt = DetectionCheckpointer(model)
    ckpt.load(str(path))
    assert model.fc.weight.tolist() == [1.5, -2.0, 3.25, 200.0]
    assert ckpt.incompatible_keys.unexpected_keys == []  # the _momentum blob was dropped
