"""Writes a tiny Pascal VOC folder (Annotations/*.xml, ImageSets/Main/<split>.txt, JPEGImages/*.jpg) in VOC's own
format, for the loader and evaluator tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_voc(root: Path, images: dict[str, tuple[int, int, list[tuple]]], splits: dict[str, list[str]]) -> Path:
    """``images``: id -> (height, width, [(class name, xmin, ymin, xmax, ymax, difficult), ...]) with VOC's
    1-based inclusive pixel coordinates; ``splits``: split name -> image ids."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (h, w, objects) in images.items():
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1, difficult in objects
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objs}</annotation>"
        )
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
