from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets.shapes import SHAPES_KEYPOINT_NAMES, ShapesParams, generate_shapes

PARAMS = ShapesParams(num_images=6, image_size=64, seed=3)


def _digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    a = generate_shapes(PARAMS, "train", tmp_path / "a")
    b = generate_shapes(PARAMS, "train", tmp_path / "b")
    assert a.name == b.name  # folder name = split + parameter hash
    da, db = _digest_tree(a), _digest_tree(b)
    assert len(da) == 3 * 6 + 3 and da == db
    c = generate_shapes(ShapesParams(num_images=6, image_size=64, seed=4), "train", tmp_path / "a")
    assert c != a
    assert _digest_tree(c)["images/000001.png"] != da["images/000001.png"]
    # reused, not regenerated
    mtime = (a / "instances.json").stat().st_mtime_ns
    assert generate_shapes(PARAMS, "train", tmp_path / "a") == a
    assert (a / "instances.json").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]


def _gen(root: str) -> str:
    return str(generate_shapes(PARAMS, "train", root))


def test_parallel_generation_is_safe(tmp_path: Path):
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        folders = pool.map(_gen, [str(tmp_path)] * 3)
    assert len(set(folders)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [Path(folders[0]).name]  # no leftover temporary folders
    assert len(json.loads((Path(folders[0]) / "instances.json").read_text())["images"]) == 6


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def test_annotations_match_drawn_pixels(tmp_path: Path):
    folder = generate_shapes(ShapesParams(num_images=10, image_size=96, seed=1), "val", tmp_path)
    inst = json.loads((folder / "instances.json").read_text())
    pan = json.loads((folder / "panoptic.json").read_text())
    seg_by_image = {a["image_id"]: a for a in pan["annotations"]}
    cats = {c["id"]: c for c in inst["categories"]}
    assert [c["name"] for c in cats.values()] == ["circle", "triangle", "square"]
    assert cats[2]["keypoints"] == list(SHAPES_KEYPOINT_NAMES)
    n_checked = 0
    for img in inst["images"]:
        h, w = img["height"], img["width"]
        image = np.asarray(Image.open(folder / "images" / img["file_name"]), dtype=np.float64)
        rgb = np.asarray(Image.open(folder / "panoptic" / img["file_name"]), dtype=np.int64)
        pan_ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        stuff = np.asarray(Image.open(folder / "panoptic_stuff" / img["file_name"]))
        anns = [a for a in inst["annotations"] if a["image_id"] == img["id"]]
        thing_segments = [s for s in seg_by_image[img["id"]]["segments_info"] if s["category_id"] <= 3]
        assert 1 <= len(anns) == len(thing_segments)
        for ann, seg in zip(anns, thing_segments):
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            # the polygon, rasterised independently by pycocotools, is exactly the object's panoptic segment
            mask = mask_util.decode(mask_util.frPyObjects(ann["segmentation"], h, w))[..., 0].astype(bool)
            np.testing.assert_array_equal(mask, pan_ids == seg["id"])
            assert ann["area"] == mask.sum() == seg["area"]
            # area of the polygon (shoelace) ~ drawn pixels, within half a pixel along the perimeter
            perimeter = float(np.sum(np.linalg.norm(poly - np.roll(poly, 1, axis=0), axis=1)))
            assert abs(_polygon_area(poly) - mask.sum()) <= 0.5 * perimeter + 2
            # the box contains the mask (pixel centres)
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert xs.min() + 0.5 >= x and xs.max() + 0.5 <= x + bw and ys.min() + 0.5 >= y and ys.max() + 0.5 <= y + bh
            # objects are drawn in a colour distinct from what surrounds them
            ring = np.zeros_like(mask)
            y0, y1 = max(int(y) - 3, 0), min(int(y + bh) + 4, h)
            x0, x1 = max(int(x) - 3, 0), min(int(x + bw) + 4, w)
            ring[y0:y1, x0:x1] = True
            ring &= pan_ids != seg["id"]
            ring &= stuff != 0
            if ring.sum() > 20:
                assert np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)) > 30
            assert np.all(stuff[mask] == 0)  # things are class 0 in the Panoptic-FPN semantic map
            if ann["category_id"] == 2:
                kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(4, 3)
                assert ann["num_keypoints"] == 4 and np.all(kp[:, 2] == 2)
                apex, left, right, center = kp[:, :2] + 0.5
                assert left[0] < right[0] and apex[1] < min(left[1], right[1])
                np.testing.assert_allclose(center, poly.mean(0), atol=0.02)
            else:
                assert ann["num_keypoints"] == 0 and not any(ann["keypoints"])
            n_checked += 1
    assert n_checked >= 10
    assert set(np.unique(stuff)) <= {0, 1, 2}


def test_registered_metadata(shapes_root: Path):
    meta = MetadataCatalog.get("tshapes_train")
    assert meta.thing_classes == ["circle", "triangle", "square"]
    assert meta.keypoint_flip_map == [["left_base", "right_base"]] and meta.evaluator_type == "coco"
    assert Path(meta.json_file).is_file() and str(shapes_root) in meta.json_file
    dicts = DatasetCatalog.get("tshapes_train")
    assert len(dicts) == 8 and {d["image_id"] for d in dicts} == set(range(1, 9))
    sep = DatasetCatalog.get("tshapes_train_panoptic_separated")
    assert "sem_seg_file_name" in sep[0] and "annotations" in sep[0]
    assert MetadataCatalog.get("tshapes_train_panoptic_separated").stuff_classes == ["things", "sky", "ground"]
    assert len(DatasetCatalog.get("tshapes_val_panoptic_stuffonly")) == 4


def test_bad_params():
    with pytest.raises(ValueError):
        ShapesParams(num_images=0)
    with pytest.raises(ValueError):
        ShapesParams(min_objects=3, max_objects=2)
