from __future__ import annotations

import pytest

from detlightning.utils.file_io import PathManager, PathManagerBase


def test_local_operations(tmp_path):
    d = tmp_path / "a" / "b"
    PathManager.mkdirs(str(d))
    PathManager.mkdirs(str(d))  # exist_ok
    assert PathManager.isdir(str(d)) and not PathManager.isfile(str(d))
    f = d / "x.txt"
    with PathManager.open(str(f), "w") as fh:
        fh.write("hello")
    assert PathManager.exists(str(f)) and PathManager.isfile(f)
    with PathManager.open(f"file://{f}") as fh:
        assert fh.read() == "hello"
    with PathManager.open(f, "rb") as fh:
        assert fh.read() == b"hello"
    assert PathManager.ls(str(d)) == ["x.txt"]
    assert PathManager.get_local_path(str(f)) == str(f)
    PathManager.copy(str(f), str(d / "y.txt"))
    with pytest.raises(FileExistsError):
        PathManager.copy(str(f), str(d / "y.txt"))
    PathManager.rm(str(f))
    assert not PathManager.exists(str(f))
    with pytest.raises(FileNotFoundError):
        PathManager.open(str(f))
    PathManager.mkdirs("")  # dirname of a bare file name: no-op


@pytest.mark.parametrize("url", ["s3://bucket/key", "https://example.com/x.pkl", "detectron2://ImageNetPretrained/x"])
def test_unsupported_scheme_is_a_clear_error(url):
    pm = PathManagerBase()
    with pytest.raises(ValueError, match="unsupported path scheme") as ei:
        pm.open(url)
    assert url in str(ei.value)
    with pytest.raises(ValueError, match="unsupported path scheme"):
        pm.exists(url)


def test_registered_handler_resolves_for_reading(tmp_path):
    local = tmp_path / "model.pkl"
    local.write_bytes(b"abc")
    pm = PathManagerBase()
    seen: list[str] = []

    def resolve(path: str) -> str:
        seen.append(path)
        return str(local)

    pm.register_handler("detectron2://", resolve)
    with pm.open("detectron2://ImageNetPretrained/model.pkl", "rb") as fh:
        assert fh.read() == b"abc"
    assert pm.get_local_path("detectron2://x") == str(local)
    assert seen == ["detectron2://ImageNetPretrained/model.pkl", "detectron2://x"]
    with pytest.raises(ValueError, match="only reading"):
        pm.open("detectron2://x", "w")
    with pytest.raises(ValueError, match="already registered"):
        pm.register_handler("detectron2://", resolve)
