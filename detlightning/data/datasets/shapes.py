"""The built-in "shapes" dataset: procedurally drawn, deterministic images, no download.

Each image is a sky/ground scene (two stuff classes, split by a wavy horizon) with 1-5 non-overlapping solid
shapes of three thing classes: circle, triangle and square. Triangles carry 4 keypoints (apex, left_base,
right_base, center). The generator writes, once per parameter set, COCO-format files into a cache folder whose
name holds a hash of the parameters:

    <root>/<split>_<hash>/
        images/000001.png ...           RGB images
        instances.json                  COCO instances + keypoints (polygons)
        panoptic/000001.png ...         COCO panoptic PNGs (id = R + 256 G + 256^2 B)
        panoptic.json                   COCO panoptic segments_info
        panoptic_stuff/000001.png ...   semantic maps for Panoptic FPN: things 0, sky 1, ground 2
        params.json

Instance masks are rasterised with pycocotools from the very polygons stored in the json, so a decoded
annotation equals the drawn pixels exactly. Generation happens in a temporary folder renamed into place, so
parallel processes never see a half-written dataset.

The root is ``$DETLIGHTNING_DATASETS/shapes`` when that variable is set, else ``~/.cache/detlightning/shapes``.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ...config.reader import cfg_get
from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import panoptic_standard_meta
from .coco import load_coco_json
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_KEYPOINT_NAMES",
    "SHAPES_KEYPOINT_FLIP_MAP",
    "ShapesParams",
    "generate_shapes",
    "get_shapes_metadata",
    "register_shapes",
    "register_shapes_from_cfg",
    "shapes_root",
]

logger = logging.getLogger(__name__)

# Bumped whenever the drawing code changes, so cached folders of an older generator are not reused.
GENERATOR_VERSION = 1

SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "triangle", "isthing": 1, "color": [0, 130, 200]},
    {"id": 3, "name": "square", "isthing": 1, "color": [255, 200, 0]},
    {"id": 4, "name": "sky", "isthing": 0, "color": [135, 206, 235]},
    {"id": 5, "name": "ground", "isthing": 0, "color": [110, 160, 60]},
]
_CIRCLE, _TRIANGLE, _SQUARE = 1, 2, 3
_SKY, _GROUND = 4, 5

SHAPES_KEYPOINT_NAMES = ("apex", "left_base", "right_base", "center")
SHAPES_KEYPOINT_FLIP_MAP = (("left_base", "right_base"),)
SHAPES_KEYPOINT_CONNECTION_RULES = [
    ("apex", "left_base", (255, 128, 0)),
    ("left_base", "right_base", (0, 200, 255)),
    ("right_base", "apex", (255, 0, 160)),
]
SHAPES_KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05, 0.05)


@dataclass(frozen=True)
class ShapesParams:
    """Everything that determines the generated files (the cache folder name is a hash of it)."""

    num_images: int = 200
    image_size: int = 256
    min_objects: int = 1
    max_objects: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"shapes: num_images must be >= 1, got {self.num_images}")
        if self.image_size < 32:
            raise ValueError(f"shapes: image_size must be >= 32, got {self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"shapes: need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]


def shapes_root() -> Path:
    """Default cache root: ``$DETLIGHTNING_DATASETS/shapes`` or ``~/.cache/detlightning/shapes``."""
    env = os.environ.get("DETLIGHTNING_DATASETS")
    if env:
        return Path(env).expanduser() / "shapes"
    return Path("~/.cache/detlightning/shapes").expanduser()


# --------------------------------------------------------------------------------------------------- drawing
def _regular_polygon(cx: float, cy: float, r: float, n: int, start_deg: float) -> np.ndarray:
    """(n, 2) vertices on a circle, starting at ``start_deg`` (0 = +x, 90 = down, image coordinates)."""
    ang = np.deg2rad(start_deg) + np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)


def _make_shape(kind: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    if kind == _CIRCLE:
        return _regular_polygon(cx, cy, r, 32, 0.0)
    if kind == _SQUARE:
        return _regular_polygon(cx, cy, r, 4, float(rng.uniform(0, 90)))
    # Triangle: apex up; a small tilt keeps "left_base" on the left, so the flip map stays meaningful.
    return _regular_polygon(cx, cy, r, 3, -90.0 + float(rng.uniform(-20, 20)))


def _rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask of ``poly`` with COCO's rasteriser (the one used to decode annotations)."""
    rle = mask_util.frPyObjects([poly.reshape(-1).tolist()], h, w)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def _draw_image(index: int, params: ShapesParams) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw image ``index``: (RGB uint8 (H, W, 3), stuff map (H, W) of category ids, objects)."""
    rng = np.random.default_rng([params.seed, index])
    s = params.image_size
    aspect = rng.integers(3)  # square, landscape, portrait: exercises aspect-ratio grouping
    h, w = (s, s) if aspect == 0 else ((s, round(s * 4 / 3)) if aspect == 1 else (round(s * 4 / 3), s))

    # Background: sky above a wavy horizon, ground below.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * rng.uniform(0.35, 0.65) + h * 0.06 * np.sin(
        2 * np.pi * xx[0] / (w * rng.uniform(0.5, 1.5)) + rng.uniform(0, 2 * np.pi)
    )
    stuff = np.where(yy + 0.5 < horizon[None, :], _SKY, _GROUND).astype(np.uint8)
    sky_top = np.array([90, 150, 230]) + rng.uniform(-20, 20, 3)
    sky_bottom = np.array([190, 220, 250]) + rng.uniform(-15, 5, 3)
    ground_col = np.array([100, 150, 60]) + rng.uniform(-30, 30, 3)
    t = (yy / max(h - 1, 1))[..., None]
    image = np.where(
        (stuff == _SKY)[..., None],
        sky_top * (1 - t) + sky_bottom * t,
        ground_col * (0.8 + 0.4 * t),
    )

    objects: list[dict[str, Any]] = []
    occupied: list[tuple[float, float, float]] = []
    num = int(rng.integers(params.min_objects, params.max_objects + 1))
    for _ in range(num):
        for _attempt in range(50):
            r = float(rng.uniform(0.08, 0.2) * min(h, w))
            cx = float(rng.uniform(r + 2, w - r - 2))
            cy = float(rng.uniform(r + 2, h - r - 2))
            if all(math.hypot(cx - ox, cy - oy) > r + orad + 3 for ox, oy, orad in occupied):
                break
        else:
            continue  # no room left for another object
        kind = int(rng.integers(1, 4))
        poly = np.round(_make_shape(kind, cx, cy, r, rng), 2)
        mask = _rasterize(poly, h, w)
        if not mask.any():
            continue
        occupied.append((cx, cy, r))
        # Saturated colours, away from the sky/ground palette.
        color = 255 * np.array(colorsys.hsv_to_rgb(float(rng.uniform()), 0.85, 0.9))
        shade = 1.0 - 0.25 * ((yy[mask] - (cy - r)) / (2 * r)).clip(0, 1)[:, None]
        image[mask] = color * shade
        obj: dict[str, Any] = {"category_id": kind, "polygon": poly, "mask": mask}
        if kind == _TRIANGLE:
            # Vertices are apex, then clockwise on screen: right_base, left_base (start -90, step +120 deg).
            apex, right_base, left_base = poly
            obj["keypoints"] = np.stack([apex, left_base, right_base, poly.mean(axis=0)])
        objects.append(obj)

    image = image + rng.normal(0, 6, size=image.shape)  # texture, so the net cannot key on flat colours
    return np.clip(np.round(image), 0, 255).astype(np.uint8), stuff, objects


def _bbox_xywh(poly: np.ndarray) -> list[float]:
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def _mask_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _categories_json() -> list[dict[str, Any]]:
    cats = []
    for c in SHAPES_CATEGORIES:
        if not c["isthing"]:
            continue
        d = {"id": c["id"], "name": c["name"], "supercategory": "shape"}
        if c["id"] == _TRIANGLE:
            d["keypoints"] = list(SHAPES_KEYPOINT_NAMES)
            names = list(SHAPES_KEYPOINT_NAMES)
            # COCO skeletons are 1-based keypoint indices
            d["skeleton"] = [[names.index(a) + 1, names.index(b) + 1] for a, b, _ in SHAPES_KEYPOINT_CONNECTION_RULES]
        cats.append(d)
    return cats


def _write_split(folder: Path, params: ShapesParams) -> None:
    """Write all files of one parameter set into ``folder`` (which exists and is empty)."""
    for sub in ("images", "panoptic", "panoptic_stuff"):
        (folder / sub).mkdir()
    images, annotations, pan_annotations = [], [], []
    num_kpts = len(SHAPES_KEYPOINT_NAMES)
    for index in range(params.num_images):
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        image, stuff, objects = _draw_image(index, params)
        h, w = stuff.shape
        # Fast zlib level: noisy images barely compress anyway.
        Image.fromarray(image).save(folder / "images" / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})

        pan_ids = np.zeros((h, w), dtype=np.int64)
        segments = []
        thing_pixels = np.zeros((h, w), dtype=bool)
        for obj in objects:
            mask = obj["mask"]
            thing_pixels |= mask
            kpts = obj.get("keypoints")
            if kpts is not None:
                # COCO stores keypoints as pixel indices (the loader adds 0.5 back).
                flat = [v for x, y in kpts for v in (round(float(x) - 0.5, 2), round(float(y) - 0.5, 2), 2)]
                n_vis = num_kpts
            else:
                flat, n_vis = [0] * (3 * num_kpts), 0
            ann_id = len(annotations) + 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "bbox": _bbox_xywh(obj["polygon"]),
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [obj["polygon"].reshape(-1).tolist()],
                    "keypoints": flat,
                    "num_keypoints": n_vis,
                }
            )
            seg_id = len(segments) + 1
            pan_ids[mask] = seg_id
            segments.append(
                {"id": seg_id, "category_id": obj["category_id"], "iscrowd": 0, "bbox": _mask_bbox(mask),
                 "area": int(mask.sum())}
            )  # fmt: skip
        for cat in (_SKY, _GROUND):
            region = (stuff == cat) & ~thing_pixels
            if region.any():
                seg_id = len(segments) + 1
                pan_ids[region] = seg_id
                segments.append(
                    {"id": seg_id, "category_id": cat, "iscrowd": 0, "bbox": _mask_bbox(region),
                     "area": int(region.sum())}
                )  # fmt: skip
        rgb = np.stack([pan_ids % 256, pan_ids // 256 % 256, pan_ids // 65536], axis=2).astype(np.uint8)
        Image.fromarray(rgb).save(folder / "panoptic" / file_name)
        pan_annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})

        # Panoptic-FPN semantic target: things 0, stuff 1..#stuff in category order.
        sem = np.where(thing_pixels, 0, np.where(stuff == _SKY, 1, 2)).astype(np.uint8)
        Image.fromarray(sem).save(folder / "panoptic_stuff" / file_name)

    info = {"description": "detlightning built-in shapes dataset", "version": GENERATOR_VERSION}
    instances = {"info": info, "images": images, "annotations": annotations, "categories": _categories_json()}
    panoptic = {
        "info": info,
        "images": images,
        "annotations": pan_annotations,
        "categories": [dict(c) for c in SHAPES_CATEGORIES],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    (folder / "panoptic.json").write_text(json.dumps(panoptic))
    (folder / "params.json").write_text(json.dumps({**asdict(params), "version": GENERATOR_VERSION}, indent=1))


def split_folder(params: ShapesParams, split: str, root: str | os.PathLike | None = None) -> Path:
    """Where ``generate_shapes`` puts this parameter set (``<root>/<split>_<hash>``)."""
    return Path(root if root is not None else shapes_root()).expanduser() / f"{split}_{params.digest()}"


def generate_shapes(params: ShapesParams, split: str = "train", root: str | os.PathLike | None = None) -> Path:
    """Generate (or reuse) the files of ``params``; returns the folder. Safe to call from parallel processes."""
    final = split_folder(params, split, root)
    if (final / "params.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp_{final.name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        logger.info("Generating %d shapes images (%s) into %s", params.num_images, split, final)
        _write_split(tmp, params)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its copy first; theirs is identical (deterministic), keep it.
            if not (final / "params.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------- registration
def get_shapes_metadata() -> dict[str, Any]:
    """Metadata of the shapes instance datasets (classes, colours, keypoints)."""
    things = [c for c in SHAPES_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "keypoint_names": list(SHAPES_KEYPOINT_NAMES),
        "keypoint_flip_map": [list(p) for p in SHAPES_KEYPOINT_FLIP_MAP],
        "keypoint_connection_rules": SHAPES_KEYPOINT_CONNECTION_RULES,
        "keypoint_oks_sigmas": list(SHAPES_KEYPOINT_OKS_SIGMAS),
    }


def _separated_metadata() -> dict[str, Any]:
    stuff = [c for c in SHAPES_CATEGORIES if not c["isthing"]]
    meta = get_shapes_metadata()
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    meta.update(
        stuff_classes=["things"] + [c["name"] for c in stuff],
        stuff_colors=[[82, 18, 128]] + [c["color"] for c in stuff],
        stuff_dataset_id_to_contiguous_id=stuff_map,
    )
    return meta


def _generating_first(ensure: Callable[[], Path], loader: Callable[[], Any]) -> Callable[[], Any]:
    def load() -> Any:
        ensure()
        return loader()

    return load


def _forget(name: str) -> None:
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def register_shapes(
    prefix: str = "shapes",
    *,
    root: str | os.PathLike | None = None,
    num_train: int = 200,
    num_val: int = 50,
    image_size: int = 256,
    min_objects: int = 1,
    max_objects: int = 5,
    seed: int = 0,
    replace: bool = False,
) -> list[str]:
    """Register the shapes datasets; files are generated on first ``DatasetCatalog.get``.

    Names, for split in (train, val): ``{prefix}_{split}`` (instances + keypoints, COCO evaluation),
    ``{prefix}_{split}_panoptic`` (standard panoptic), ``{prefix}_{split}_panoptic_separated`` and
    ``{prefix}_{split}_panoptic_stuffonly`` (Panoptic FPN form). The val split uses ``seed + 1``.
    ``replace=True`` re-registers names that exist (e.g. with other sizes). Returns the registered names.
    """
    names = []
    for split, num, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        params = ShapesParams(num, image_size, min_objects, max_objects, split_seed)
        folder = split_folder(params, split, root)
        image_root = str(folder / "images")
        json_file = str(folder / "instances.json")
        name = f"{prefix}_{split}"
        split_names = [name, f"{name}_panoptic", f"{name}_panoptic_separated", f"{name}_panoptic_stuffonly"]
        if replace:
            for n in split_names:
                _forget(n)

        def ensure(params: ShapesParams = params, split: str = split) -> Path:
            return generate_shapes(params, split, root)

        def load_instances(ensure=ensure, json_file=json_file, image_root=image_root, name=name) -> list[dict]:
            ensure()
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load_instances)
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            shapes_params=asdict(params),
            **get_shapes_metadata(),
        )

        panoptic_root = str(folder / "panoptic")
        panoptic_json = str(folder / "panoptic.json")
        sem_seg_root = str(folder / "panoptic_stuff")
        register_coco_panoptic(
            f"{name}_panoptic",
            panoptic_standard_meta(SHAPES_CATEGORIES),
            image_root,
            panoptic_root,
            panoptic_json,
            json_file,
        )
        register_coco_panoptic_separated(
            f"{name}_panoptic", _separated_metadata(), image_root, panoptic_root, panoptic_json, sem_seg_root, json_file
        )
        # The panoptic loaders above read files directly: make them generate first, too.
        for n in split_names[1:]:
            DatasetCatalog[n] = _generating_first(ensure, DatasetCatalog[n])
        names.extend(split_names)
    return names


def register_shapes_from_cfg(cfg: Any) -> list[str]:
    """Re-register the built-in shapes datasets with the parameters in ``datasets.shapes`` (keys ``prefix``,
    ``root``, ``num_train``, ``num_val``, ``image_size``, ``min_objects``, ``max_objects``, ``seed``), when the
    config has that node. Registration is cheap: files are generated on first use. Returns the names."""
    spec = cfg_get(cfg, "datasets.shapes", None)
    if not spec:
        return []
    spec = dict(spec)
    known = {"prefix", "root", "num_train", "num_val", "image_size", "min_objects", "max_objects", "seed"}
    unknown = set(spec) - known
    if unknown:
        raise KeyError(f"Unknown keys in datasets.shapes: {sorted(unknown)}; known: {sorted(known)}")
    prefix = spec.pop("prefix", "shapes")
    root = spec.pop("root", None) or None
    return register_shapes(prefix, root=root, replace=True, **spec)
