"""detectron2:// and catalog:// resolution, the download cache, and the offline error. No network is used."""
from __future__ import annotations

import io
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer, get_local_path, paths, resolve_url

from .toy_models import ToyDetector

R50_URL = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(paths.CACHE_ENV, str(root))
    monkeypatch.delenv(paths.OFFLINE_ENV, raising=False)
    return root


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every download attempt fails like an unreachable host; returns the URLs that were tried."""
    tried: list[str] = []

    def fail(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(paths.urllib.request, "urlopen", fail)
    return tried


def test_resolve_detectron2_and_catalog_urls():
    assert resolve_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == R50_URL
    assert resolve_url("detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
    )
    assert resolve_url("catalog://ImageNetPretrained/MSRA/R-50") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert resolve_url("catalog://Caffe2Detectron/COCO/35858933/e2e_mask_rcnn_R-50-FPN_1x") == (
        "https://dl.fbaipublicfiles.com/detectron/35858933/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml.01_48_14."
        "DzEQe4wC/output/train/coco_2014_train%3Acoco_2014_valminusminival/generalized_rcnn/model_final.pkl"
    )
    with pytest.raises(KeyError, match="MSRA/R-50"):
        resolve_url("catalog://ImageNetPretrained/nope")
    assert resolve_url("/a/b.pth") == "/a/b.pth"


def test_cache_dir_mirrors_url_path(cache, monkeypatch):
    assert paths.get_cache_dir() == cache
    assert paths.cached_path_for_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        cache / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    )
    monkeypatch.delenv(paths.CACHE_ENV)
    assert paths.get_cache_dir() == Path.home() / ".torch" / "detlightning_cache"
    with pytest.raises(ValueError, match=r"\.\."):
        paths.cached_path_for_url("https://example.com/a/../../etc/passwd")


def test_offline_error_names_url_and_local_path(cache, no_network):
    expected_local = cache / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    with pytest.raises(FileNotFoundError) as err:
        DetectionCheckpointer(ToyDetector()).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    msg = str(err.value)
    assert R50_URL in msg and str(expected_local) in msg
    assert "Temporary failure in name resolution" in msg
    assert no_network == [R50_URL]
    assert not expected_local.exists()
    assert not any(p.is_file() for p in cache.rglob("*"))  # no partial download left behind


def test_offline_env_skips_download(cache, no_network, monkeypatch):
    monkeypatch.setenv(paths.OFFLINE_ENV, "1")
    with pytest.raises(FileNotFoundError, match="R-50.pkl"):
        get_local_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert no_network == []


def test_cached_file_is_used_without_download(cache, no_network):
    src = ToyDetector(seed=1)
    local = cache / "detectron2" / "some" / "model_final.pkl"
    local.parent.mkdir(parents=True)
    with open(local, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "zoo"}, f)
    dst = ToyDetector(seed=2)
    DetectionCheckpointer(dst).load("detectron2://some/model_final.pkl")
    assert torch.equal(dst.backbone.bottom_up.stem.conv1.weight, src.backbone.bottom_up.stem.conv1.weight)
    assert no_network == []


def test_download_writes_into_cache(cache, monkeypatch):
    src = ToyDetector(seed=1)
    buf = io.BytesIO()
    torch.save({"model": src.state_dict()}, buf)
    payload = buf.getvalue()
    seen = []

    def fake_urlopen(url, *args, **kwargs):
        seen.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(paths.urllib.request, "urlopen", fake_urlopen)
    dst = ToyDetector(seed=2)
    url = "https://example.com/models/run1/model_final.pth"
    DetectionCheckpointer(dst).load(url)
    assert seen == [url]
    assert (cache / "models" / "run1" / "model_final.pth").read_bytes() == payload
    assert torch.equal(dst.roi_heads.box_predictor.cls_score.weight, src.roi_heads.box_predictor.cls_score.weight)
    DetectionCheckpointer(dst).load(url)  # second time: from the cache
    assert seen == [url]


def test_download_failure_from_patched_downloader(cache, monkeypatch):
    def broken(url, dst):
        raise OSError("connection reset")

    monkeypatch.setattr(paths, "_download", broken)
    with pytest.raises(FileNotFoundError, match="connection reset") as err:
        get_local_path("https://example.com/x/y.pkl")
    assert str(cache / "x" / "y.pkl") in str(err.value)


def test_local_and_file_urls(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"")
    assert get_local_path(str(f)) == str(f)
    assert get_local_path(f.as_uri()) == str(f)
