"""ADE20K semantic segmentation (the SceneParsing benchmark, ``ADEChallengeData2016``), registered as detectron2's
``ade20k_sem_seg_{train,val}``.

detectron2's ``datasets/prepare_ade20k_sem_seg.py`` writes ``annotations_detectron2/{training,validation}``: the
benchmark's label maps shifted by one, so that the 150 classes are 0..149 and "other" (0) becomes 255 (ignored).
"""
from __future__ import annotations

import os

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import load_sem_seg

__all__ = ["ADE20K_SEM_SEG_CATEGORIES", "register_all_ade20k"]

# The names of objectInfo150.csv (the benchmark's class list), in label order 1..150.
ADE20K_SEM_SEG_CATEGORIES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road, route", "bed", "window ", "grass", "cabinet",
    "sidewalk, pavement", "person", "earth, ground", "door", "table", "mountain, mount", "plant", "curtain", "chair",
    "car", "water", "painting, picture", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock, stone", "wardrobe, closet, press", "lamp", "tub", "rail", "cushion",
    "base, pedestal, stand", "box", "column, pillar", "signboard, sign", "chest of drawers, chest, bureau, dresser",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator, icebox", "grandstand, covered stand",
    "path", "stairs", "runway", "case, display case, showcase, vitrine", "pool table, billiard table, snooker table",
    "pillow", "screen door, screen", "stairway, staircase", "river", "bridge, span", "bookcase", "blind, screen",
    "coffee table", "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm, palm tree", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel, hut, hutch, shack, shanty", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning, sunshade, sunblind", "street lamp", "booth", "tv", "plane", "dirt track", "clothes", "pole",
    "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock", "bottle",
    "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage", "van", "ship", "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "pool", "stool", "barrel, cask",
    "basket, handbasket", "falls", "tent", "bag", "minibike, motorbike", "cradle", "oven", "ball", "food, solid food",
    "step, stair", "tank, storage tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket, cover", "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light", "tray",
    "trash can", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass, drinking glass", "clock", "flag",
]


def register_all_ade20k(root: str) -> None:
    """Register ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` under ``<root>/ADEChallengeData2016``: images in
    ``images/{training,validation}`` (jpg), label maps in ``annotations_detectron2/{training,validation}`` (png)."""
    root = os.path.join(root, "ADEChallengeData2016")
    for split, folder in (("train", "training"), ("val", "validation")):
        image_dir = os.path.join(root, "images", folder)
        gt_dir = os.path.join(root, "annotations_detectron2", folder)
        name = f"ade20k_sem_seg_{split}"
        DatasetCatalog.register(
            name, lambda gt=gt_dir, img=image_dir: load_sem_seg(gt, img, gt_ext="png", image_ext="jpg")
        )
        MetadataCatalog.get(name).set(
            stuff_classes=list(ADE20K_SEM_SEG_CATEGORIES),
            image_root=image_dir,
            sem_seg_root=gt_dir,
            evaluator_type="sem_seg",
            ignore_label=255,
        )
