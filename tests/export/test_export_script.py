"""scripts/export.py on a tiny model: writes the file and reports a passing check against the eager model."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests._scripts import load_script

TINY = [
    "model=mask_rcnn",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.resnets.norm=GN",
    "model.fpn.norm=GN",
    "model.fpn.out_channels=32",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=50",
    "model.roi_box_head.fc_dim=64",
    "model.roi_mask_head.conv_dim=16",
    "model.roi_heads.score_thresh_test=0.2",
    "input.min_size_test=64",
    "input.max_size_test=100",
    "seed=0",
]


@pytest.fixture(scope="module")
def export_script() -> ModuleType:
    return load_script("export")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_script_writes_and_checks(fmt, export_script, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    result = export_script.main(["--format", fmt, "--output", str(tmp_path), *TINY])
    path = Path(result["path"])
    assert path.is_file() and path.parent == tmp_path
    assert path.name == {"torchscript": "model.ts", "onnx": "model.onnx"}[fmt]
    check = result["check"]
    assert result["ok"], check
    assert check["eager"] == check["exported"] > 0
    assert check["max_box_diff"] <= 1e-4 and check["classes_equal"]
    printed = capsys.readouterr().out
    assert "max box difference" in printed and printed.rstrip().endswith("OK")


def test_export_script_sample_image(export_script, tmp_path, capsys):
    from PIL import Image

    from .conftest import shapes_image

    image = shapes_image(3).flip(0).permute(1, 2, 0).numpy()  # BGR CHW -> RGB HWC
    Image.fromarray(image).save(tmp_path / "sample.png")
    sample = str(tmp_path / "sample.png")
    out = str(tmp_path / "out")
    result = export_script.main(["--format", "torchscript", "--output", out, "--sample-image", sample, *TINY])
    assert result["ok"], result["check"]
    assert "(3, 64, 85)" in capsys.readouterr().out  # the sample image, resized to min_size_test=64
    with pytest.raises(export_script.ExportError, match="missing.png"):
        export_script.main(["--format", "torchscript", "--output", str(tmp_path), "--sample-image",
                            str(tmp_path / "missing.png"), *TINY])
