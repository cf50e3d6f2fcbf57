"""Writes a tiny Cityscapes split in the dataset's own formats: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
``gtFine/<split>/<city>/*_gtFine_{polygons.json,instanceIds.png,labelIds.png,labelTrainIds.png}``, the PNGs made
from the polygons by cityscapesscripts' own preparation code (as for the real dataset)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

H, W = 40, 80


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A polygon over pixels x0..x1, y0..y1 (inclusive, as PIL fills integer vertices)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# objects in file order: later ones are drawn over earlier ones
IMAGES: dict[str, list[dict]] = {
    "frankfurt/frankfurt_000000_000294": [
        {"label": "road", "polygon": _rect(0, 20, 79, 39)},
        {"label": "car", "polygon": _rect(5, 5, 24, 24)},
        {"label": "person", "polygon": _rect(30, 5, 41, 30)},
        {"label": "person", "polygon": _rect(36, 10, 49, 35)},  # hides the right part of the first person
        {"label": "cargroup", "polygon": _rect(55, 22, 75, 37)},  # a crowd region
        {"label": "caravan", "polygon": _rect(60, 2, 75, 15)},  # has instances, but not evaluated
        {"label": "car", "polygon": _rect(0, 0, 10, 10), "deleted": 1},
        {"label": "license plate", "polygon": _rect(10, 18, 15, 20)},  # id -1: never drawn
    ],
    "lindau/lindau_000001_000019": [
        {"label": "sky", "polygon": _rect(0, 0, 79, 9)},
        {"label": "bicycle", "polygon": _rect(10, 12, 29, 31)},
        {"label": "rider", "polygon": _rect(12, 5, 25, 25)},  # on the bicycle
    ],
}


def write_cityscapes(root: Path, split: str = "val") -> Path:
    """The split under ``root`` (``root/leftImg8bit/<split>``, ``root/gtFine/<split>``); returns ``root``."""
    json2instance = pytest.importorskip("cityscapesscripts.preparation.json2instanceImg")
    json2label = pytest.importorskip("cityscapesscripts.preparation.json2labelImg")
    annotation_mod = pytest.importorskip("cityscapesscripts.helpers.annotation")
    rng = np.random.default_rng(0)
    for key, objects in IMAGES.items():
        image = root / "leftImg8bit" / split / f"{key}_leftImg8bit.png"
        gt = root / "gtFine" / split / f"{key}_gtFine_polygons.json"
        image.parent.mkdir(parents=True, exist_ok=True)
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image)
        gt.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects}))
        stem = str(gt)[: -len("polygons.json")]
        # 16-bit, as the dataset ships it (Pillow no longer writes cityscapesscripts' 32-bit image as PNG)
        annotation = annotation_mod.Annotation()
        annotation.fromJsonFile(str(gt))
        ids = np.asarray(json2instance.createInstanceImage(annotation, "ids"), dtype=np.int64)
        Image.fromarray(ids.astype(np.uint16)).save(stem + "instanceIds.png")
        json2label.json2labelImg(str(gt), stem + "labelIds.png", "ids")
        json2label.json2labelImg(str(gt), stem + "labelTrainIds.png", "trainIds")
    return root
