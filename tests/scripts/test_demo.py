"""scripts/demo.py: a folder of images in, one annotated PNG and one JSON of detections per image out."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image, ImageDraw

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.config import compose
from detlightning.modeling import build_model
from tests._scripts import load_script
from tests.engine.conftest import tiny_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "demo.py"
SHAPES_CLASSES = ["circle", "triangle", "square"]


def _load_script():
    return load_script("demo")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny Mask R-CNN weights (random init), its overrides, and a folder of 2 small images."""
    root = tmp_path_factory.mktemp("demo")
    # own dataset names: main() registers them in this process, and other tests rely on the plain shapes_* ones
    overrides = tiny_overrides(root / "shapes") + [
        "datasets.shapes.prefix=demo_shapes", "datasets.train=[demo_shapes_train]", "datasets.test=[demo_shapes_val]",
        "test.detections_per_image=10",
    ]
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(compose(overrides)), save_dir=str(root)).save("model")
    images = root / "images"
    images.mkdir()
    for i, size in enumerate([(72, 56), (60, 80)]):  # (W, H)
        img = Image.new("RGB", size, (110 + 40 * i, 160, 200))
        draw = ImageDraw.Draw(img)
        draw.ellipse([10, 10, 40, 40], fill=(220, 20, 60))
        draw.rectangle([30, 25, 55, 50], fill=(255, 200, 0))
        img.save(images / f"img{i}.{'png' if i == 0 else 'jpg'}")
    (images / "notes.txt").write_text("not an image; folders only contribute image files")
    return {"root": root, "images": images, "overrides": [*overrides, f"model.weights={root / 'model.pth'}"]}


def test_demo_writes_png_and_json_per_image(setup, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--input", str(setup["images"]), "--output", str(out),
           "--confidence-threshold", "0.0", *setup["overrides"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["img0.json", "img0.png", "img1.json", "img1.png"]
    for stem, (w, h) in [("img0", (72, 56)), ("img1", (60, 80))]:
        src_path = setup["images"] / (stem + (".png" if stem == "img0" else ".jpg"))
        src = np.asarray(Image.open(src_path).convert("RGB"))
        png = np.asarray(Image.open(out / f"{stem}.png"))
        assert png.shape == (h, w, 3) and (png != src).any()  # detections drawn on the image

        rec = json.loads((out / f"{stem}.json").read_text())
        assert rec["file_name"] == str(src_path) and (rec["height"], rec["width"]) == (h, w)
        insts = rec["instances"]
        assert len(insts) > 0  # threshold 0: a random model still detects
        scores = [d["score"] for d in insts]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        for d in insts:
            x0, y0, x1, y1 = d["bbox"]
            assert d["bbox_mode"] == "XYXY_ABS"
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # original pixels (the model saw 64 px)
            assert d["category_id"] in (0, 1, 2) and d["category_name"] == SHAPES_CLASSES[d["category_id"]]
            rle = {"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"].encode("ascii")}
            assert mask_util.decode(rle).shape == (h, w)
            assert "keypoints" not in d  # a Mask R-CNN has no keypoint head


def test_confidence_threshold_sets_all_test_thresholds():
    demo = _load_script()
    cfg = demo.setup_cfg(["model=mask_rcnn"], 0.3)
    assert cfg.model.retinanet.score_thresh_test == 0.3
    assert cfg.model.roi_heads.score_thresh_test == 0.3
    assert cfg.model.panoptic_fpn.combine.instances_confidence_thresh == 0.3


def test_bad_inputs(setup, tmp_path):
    demo = _load_script()
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a_broken.png").write_bytes(b"this is not a png")
    Image.open(setup["images"] / "img0.png").save(bad / "b_good.png")
    base = ["--output", str(tmp_path / "out"), "--confidence-threshold", "0.5", *setup["overrides"]]

    with pytest.raises(demo.DemoError, match="a_broken.png"):
        demo.main(["--input", str(bad), *base])
    written = demo.main(["--input", str(bad), "--skip-bad", *base])
    assert sorted(p.name for p in written) == ["b_good.json", "b_good.png"]

    with pytest.raises(demo.DemoError, match="no files match"):
        demo.main(["--input", str(tmp_path / "*.nothing"), *base])
    with pytest.raises(demo.DemoError, match="no such file or folder"):
        demo.main(["--input", str(tmp_path / "missing.jpg"), *base])


def test_video_without_opencv_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("cv2") is not None:
        pytest.skip("OpenCV is installed: videos are supported")
    demo = _load_script()
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 16)
    with pytest.raises(demo.DemoError, match="needs OpenCV"):
        demo.main(["--input", str(video), "--output", str(tmp_path / "out")])
