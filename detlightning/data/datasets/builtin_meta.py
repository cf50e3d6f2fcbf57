"""Metadata of the built-in datasets: COCO categories (instances, person keypoints, panoptic) as published with
the COCO 2017 annotations.

``_get_builtin_metadata(name)`` returns the dict that ``register_*`` stores in MetadataCatalog for
``"coco"``, ``"coco_person"``, ``"coco_panoptic_separated"`` and ``"coco_panoptic_standard"``.
"""
from __future__ import annotations

import colorsys
from typing import Any

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_KEYPOINT_FLIP_MAP",
    "KEYPOINT_CONNECTION_RULES",
    "category_color",
]

# (dataset id, name, isthing) of the 133 COCO panoptic categories; the 80 things are COCO's instance categories.
_COCO_THINGS = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]  # fmt: skip
_COCO_STUFF = [
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"), (109, "curtain"),
    (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"), (125, "gravel"), (128, "house"),
    (130, "light"), (133, "mirror-stuff"), (138, "net"), (141, "pillow"), (144, "platform"),
    (145, "playingfield"), (147, "railroad"), (148, "river"), (149, "road"), (151, "roof"), (154, "sand"),
    (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"), (166, "tent"), (168, "towel"),
    (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"),
    (180, "window-blind"), (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"),
    (186, "ceiling-merged"), (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"), (193, "grass-merged"),
    (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"), (197, "building-other-merged"),
    (198, "rock-merged"), (199, "wall-other-merged"), (200, "rug-merged"),
]  # fmt: skip


def category_color(index: int) -> list[int]:
    """A distinct, deterministic RGB colour for the ``index``-th category (golden-ratio hue walk)."""
    hue = (index * 0.618033988749895) % 1.0
    sat = 0.55 + 0.35 * ((index * 7) % 3) / 2
    val = 0.95 - 0.25 * ((index * 5) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return [int(r * 255), int(g * 255), int(b * 255)]


COCO_CATEGORIES: list[dict[str, Any]] = [
    {"id": cid, "name": name, "isthing": 1, "color": category_color(i)} for i, (cid, name) in enumerate(_COCO_THINGS)
] + [
    {"id": cid, "name": name, "isthing": 0, "color": category_color(80 + i)}
    for i, (cid, name) in enumerate(_COCO_STUFF)
]

COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye", "right_eye",
    "left_ear", "right_ear",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip

COCO_PERSON_KEYPOINT_FLIP_MAP = (
    ("left_eye", "right_eye"),
    ("left_ear", "right_ear"),
    ("left_shoulder", "right_shoulder"),
    ("left_elbow", "right_elbow"),
    ("left_wrist", "right_wrist"),
    ("left_hip", "right_hip"),
    ("left_knee", "right_knee"),
    ("left_ankle", "right_ankle"),
)

# Skeleton edges drawn by visualizers: (keypoint a, keypoint b, RGB colour).
KEYPOINT_CONNECTION_RULES = [
    ("left_ear", "left_eye", (102, 204, 255)),
    ("right_ear", "right_eye", (51, 153, 255)),
    ("left_eye", "nose", (102, 0, 204)),
    ("nose", "right_eye", (51, 102, 255)),
    ("left_shoulder", "right_shoulder", (255, 128, 0)),
    ("left_shoulder", "left_elbow", (153, 255, 204)),
    ("right_shoulder", "right_elbow", (128, 229, 255)),
    ("left_elbow", "left_wrist", (153, 255, 153)),
    ("right_elbow", "right_wrist", (102, 255, 224)),
    ("left_hip", "right_hip", (255, 102, 0)),
    ("left_hip", "left_knee", (255, 255, 77)),
    ("right_hip", "right_knee", (153, 255, 204)),
    ("left_knee", "left_ankle", (191, 255, 128)),
    ("right_knee", "right_ankle", (255, 195, 77)),
]


def _get_coco_instances_meta() -> dict[str, Any]:
    thing_ids = [k["id"] for k in COCO_CATEGORIES if k["isthing"] == 1]
    thing_colors = [k["color"] for k in COCO_CATEGORIES if k["isthing"] == 1]
    assert len(thing_ids) == 80, len(thing_ids)
    # Contiguous ids [0, 80) in the order of the sorted dataset ids.
    thing_dataset_id_to_contiguous_id = {k: i for i, k in enumerate(thing_ids)}
    thing_classes = [k["name"] for k in COCO_CATEGORIES if k["isthing"] == 1]
    return {
        "thing_dataset_id_to_contiguous_id": thing_dataset_id_to_contiguous_id,
        "thing_classes": thing_classes,
        "thing_colors": thing_colors,
    }


def _get_coco_panoptic_separated_meta() -> dict[str, Any]:
    """Stuff ids map to contiguous [1, 53]; every thing pixel is class 0 ("things") in the semantic maps."""
    stuff_ids = [k["id"] for k in COCO_CATEGORIES if k["isthing"] == 0]
    assert len(stuff_ids) == 53, len(stuff_ids)
    stuff_dataset_id_to_contiguous_id = {k: i + 1 for i, k in enumerate(stuff_ids)}
    stuff_dataset_id_to_contiguous_id[0] = 0
    stuff_classes = ["things"] + [
        k["name"].replace("-other", "").replace("-merged", "") for k in COCO_CATEGORIES if k["isthing"] == 0
    ]
    stuff_colors = [[82, 18, 128]] + [k["color"] for k in COCO_CATEGORIES if k["isthing"] == 0]
    ret = {
        "stuff_dataset_id_to_contiguous_id": stuff_dataset_id_to_contiguous_id,
        "stuff_classes": stuff_classes,
        "stuff_colors": stuff_colors,
    }
    ret.update(_get_coco_instances_meta())
    return ret


def panoptic_standard_meta(categories: list[dict[str, Any]]) -> dict[str, Any]:
    """Metadata of a "standard" panoptic dataset: one contiguous id space over all categories, in order.

    d2-parity: ``thing_classes`` and ``stuff_classes`` both list every category, and both id maps index into
    that shared list (things and stuff keep their positions).
    """
    meta: dict[str, Any] = {
        "thing_classes": [k["name"] for k in categories],
        "thing_colors": [k["color"] for k in categories],
        "stuff_classes": [k["name"] for k in categories],
        "stuff_colors": [k["color"] for k in categories],
    }
    thing_map: dict[int, int] = {}
    stuff_map: dict[int, int] = {}
    for i, cat in enumerate(categories):
        (thing_map if cat["isthing"] else stuff_map)[cat["id"]] = i
    meta["thing_dataset_id_to_contiguous_id"] = thing_map
    meta["stuff_dataset_id_to_contiguous_id"] = stuff_map
    return meta


def _get_builtin_metadata(dataset_name: str) -> dict[str, Any]:
    """Metadata of a built-in dataset family: "coco", "coco_person", "coco_panoptic_separated",
    "coco_panoptic_standard"."""
    if dataset_name == "coco":
        return _get_coco_instances_meta()
    if dataset_name == "coco_panoptic_separated":
        return _get_coco_panoptic_separated_meta()
    if dataset_name == "coco_panoptic_standard":
        return panoptic_standard_meta(COCO_CATEGORIES)
    if dataset_name == "coco_person":
        return {
            "thing_classes": ["person"],
            "keypoint_names": list(COCO_PERSON_KEYPOINT_NAMES),
            "keypoint_flip_map": [list(p) for p in COCO_PERSON_KEYPOINT_FLIP_MAP],
            "keypoint_connection_rules": KEYPOINT_CONNECTION_RULES,
        }
    raise KeyError(
        f"No built-in metadata for dataset '{dataset_name}'; known: coco, coco_person, "
        "coco_panoptic_separated, coco_panoptic_standard"
    )
