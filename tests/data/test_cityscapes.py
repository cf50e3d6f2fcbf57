"""Cityscapes loaders on a tiny gtFine split written in Cityscapes' formats (tests/data/cityscapes_fixture.py)."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import load_cityscapes_instances, load_cityscapes_semantic
from detlightning.data.datasets.builtin import datasets_root, register_all_cityscapes
from detlightning.structures import BoxMode

from .cityscapes_fixture import H, W, write_cityscapes

pytest.importorskip("cityscapesscripts")

# contiguous ids: person 0, rider 1, car 2, truck 3, bus 4, train 5, motorcycle 6, bicycle 7
PERSON, RIDER, CAR, BICYCLE = 0, 1, 2, 7


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"))


def _dirs(root: Path) -> tuple[str, str]:
    return str(root / "leftImg8bit" / "val"), str(root / "gtFine" / "val")


def _instance_png(record: dict) -> np.ndarray:
    gt = record["file_name"].replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_instanceIds.png")
    return np.asarray(Image.open(gt)).astype(np.int64)


def test_instances_from_json(root: Path) -> None:
    pytest.importorskip("shapely")
    dicts = load_cityscapes_instances(*_dirs(root))
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        "frankfurt_000000_000294_leftImg8bit.png", "lindau_000001_000019_leftImg8bit.png"]
    assert [d["image_id"] for d in dicts] == [os.path.basename(d["file_name"]) for d in dicts]
    assert all((d["height"], d["width"]) == (H, W) for d in dicts)

    # objects are visited last-drawn first; road / sky (no instances), the caravan (not evaluated), the deleted car
    # and the license plate (id -1) give no annotation
    frank, lindau = dicts
    assert [(a["category_id"], a["iscrowd"]) for a in frank["annotations"]] == [
        (CAR, True), (PERSON, False), (PERSON, False), (CAR, False)]
    assert [(a["category_id"], a["iscrowd"]) for a in lindau["annotations"]] == [(RIDER, False), (BICYCLE, False)]
    # pixels x0..x1 (inclusive) become the box [x0, x1 + 1): +0.5 to pixel centres, grown by half a pixel
    crowd, person_front, person_back, car = frank["annotations"]
    assert car["bbox"] == pytest.approx((5, 5, 25, 25)) and car["bbox_mode"] == BoxMode.XYXY_ABS
    assert person_front["bbox"] == pytest.approx((36, 10, 50, 36))
    assert crowd["bbox"] == pytest.approx((55, 22, 76, 38))
    assert person_back["bbox"] == pytest.approx((30, 5, 42, 31))  # its L-shaped visible part keeps the full extent

    # rasterised, every polygon covers the pixels cityscapesscripts drew for that instance (overlaps resolved the
    # same way), up to the rounded corners of the half-pixel growth
    for record, ids in ((frank, [26, 24001, 24000, 26000]), (lindau, [25000, 33000])):
        png = _instance_png(record)
        for anno, instance_id in zip(record["annotations"], ids):
            mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(anno["segmentation"], H, W))).astype(bool)
            ref = png == instance_id
            assert (mask & ref).sum() / (mask | ref).sum() > 0.95, instance_id


def test_instances_from_png_as_rle(root: Path) -> None:
    dicts = load_cityscapes_instances(*_dirs(root), from_json=False, to_polygons=False)
    frank, lindau = dicts
    # ids >= 24 in instanceIds.png: 26 (a car crowd: plain label id), 24000, 24001 (persons), 26000 (car),
    # 29000 (caravan, not evaluated)
    assert [(a["category_id"], a["iscrowd"]) for a in frank["annotations"]] == [
        (CAR, True), (PERSON, False), (PERSON, False), (CAR, False)]
    assert [(a["category_id"], a["iscrowd"]) for a in lindau["annotations"]] == [(RIDER, False), (BICYCLE, False)]
    for record, ids in ((frank, [26, 24000, 24001, 26000]), (lindau, [25000, 33000])):
        png = _instance_png(record)
        for anno, instance_id in zip(record["annotations"], ids):
            np.testing.assert_array_equal(mask_util.decode(anno["segmentation"]), png == instance_id)
    # inclusive pixel extents of the drawn pixels
    assert [tuple(int(v) for v in a["bbox"]) for a in frank["annotations"]] == [
        (55, 22, 75, 37), (30, 5, 41, 30), (36, 10, 49, 35), (5, 5, 24, 24)]


def test_instances_png_polygons_need_opencv(root: Path) -> None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="opencv"):
            load_cityscapes_instances(*_dirs(root), from_json=False, to_polygons=True)
    else:
        dicts = load_cityscapes_instances(*_dirs(root), from_json=False, to_polygons=True)
        assert [len(d["annotations"]) for d in dicts] == [4, 2]


def test_semantic(root: Path) -> None:
    dicts = load_cityscapes_semantic(*_dirs(root))
    assert [d["sem_seg_file_name"] for d in dicts] == [
        str(root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"),
        str(root / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelTrainIds.png"),
    ]
    assert all((d["height"], d["width"]) == (H, W) for d in dicts)
    assert all(os.path.isfile(d["file_name"]) for d in dicts)


def test_errors(root: Path, tmp_path: Path) -> None:
    image_dir, gt_dir = _dirs(root)
    with pytest.raises(ValueError, match="to_polygons=True"):
        load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=False)
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_cityscapes_semantic(str(tmp_path / "nope"), gt_dir)
    # no labelTrainIds.png: say how to make them
    bare = tmp_path / "bare"
    (bare / "img" / "x").mkdir(parents=True)
    (bare / "gt" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bare / "img/x/x_000000_000000_leftImg8bit.png")
    for suffix in ("instanceIds.png", "labelIds.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(bare / f"gt/x/x_000000_000000_gtFine_{suffix}")
    (bare / "gt/x/x_000000_000000_gtFine_polygons.json").write_text('{"imgHeight": 4, "imgWidth": 4, "objects": []}')
    with pytest.raises(FileNotFoundError, match="createTrainIdLabelImgs"):
        load_cityscapes_semantic(str(bare / "img"), str(bare / "gt"))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bare / "img/x/stray.png")
    with pytest.raises(ValueError, match="stray.png"):
        load_cityscapes_semantic(str(bare / "img"), str(bare / "gt"))


@pytest.fixture
def builtin_under(root: Path) -> Iterator[Path]:
    """The builtin Cityscapes names re-registered with $DETLIGHTNING_DATASETS = the fixture's parent."""
    names = [n for n in DatasetCatalog.list() if n.startswith("cityscapes_fine_")]

    def drop() -> None:
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)

    drop()
    (root.parent / "cityscapes").mkdir(exist_ok=True)
    for sub in ("leftImg8bit", "gtFine"):
        link = root.parent / "cityscapes" / sub
        if not link.exists():
            link.symlink_to(root / sub)
    register_all_cityscapes(str(root.parent))
    try:
        yield root.parent
    finally:
        drop()
        register_all_cityscapes(datasets_root())


def test_builtin_names(builtin_under: Path) -> None:
    for task, evaluator_type in (("instance_seg", "cityscapes_instance"), ("sem_seg", "cityscapes_sem_seg")):
        for split in ("train", "val", "test"):
            meta = MetadataCatalog.get(f"cityscapes_fine_{task}_{split}")
            assert meta.evaluator_type == evaluator_type
            assert os.path.normpath(meta.gt_dir) == str(builtin_under / "cityscapes" / "gtFine" / split)
            assert os.path.normpath(meta.image_dir) == str(builtin_under / "cityscapes" / "leftImg8bit" / split)
            assert meta.thing_classes == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
            assert len(meta.stuff_classes) == 19 and meta.stuff_classes[:2] == ["road", "sidewalk"]
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").ignore_label == 255
    assert len(DatasetCatalog.get("cityscapes_fine_sem_seg_val")) == 2
    if importlib.util.find_spec("shapely") is not None:  # the json loader needs it
        assert len(DatasetCatalog.get("cityscapes_fine_instance_seg_val")[0]["annotations"]) == 4


def test_metadata_names_match_cityscapesscripts() -> None:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert meta.thing_classes == [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]
    by_train_id = sorted((lb.trainId, lb.name) for lb in labels if 0 <= lb.trainId < 255)
    assert meta.stuff_classes == [name for _, name in by_train_id]
