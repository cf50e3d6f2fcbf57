#!/usr/bin/env python
"""Write annotated PNGs of what the model sees: dataset dicts after the DatasetMapper (image reading, format
conversion, augmentations, annotation transforms).

    python scripts/visualize_data.py --dataset shapes_train --num 8 --output vis/ [--mode train|test]
        [--seed 0] [overrides ...]

``overrides`` are Hydra overrides of the config (e.g. ``model=mask_rcnn model.keypoint_on=true
input.min_size_train=[320]``); masks and keypoints are drawn when the config turns them on (``model.mask_on``,
``model.keypoint_on``). ``--mode test`` uses the inference resizing but keeps the annotations.
Boxes, class labels, polygon/bit masks, keypoints (with the dataset's skeleton) and semantic maps are drawn with
PIL; each file is ``<image_id>.png``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlightning.config import get_cfg  # noqa: E402
from detlightning.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detlightning.data import detection_utils as utils  # noqa: E402
from detlightning.data.datasets.shapes import register_shapes_from_cfg  # noqa: E402
from detlightning.data.datasets.builtin_meta import category_color  # noqa: E402

logger = logging.getLogger("visualize_data")


def _color(metadata: Any, class_id: int) -> tuple[int, int, int]:
    colors = metadata.get("thing_colors")
    if colors is not None and 0 <= class_id < len(colors):
        return tuple(int(c) for c in colors[class_id])  # type: ignore[return-value]
    return tuple(category_color(class_id))  # type: ignore[return-value]


def draw_sample(sample: dict[str, Any], metadata: Any, image_format: str) -> Image.Image:
    """The mapped ``sample`` ("image" (C, H, W) tensor, optional "instances" / "sem_seg") as an annotated RGB
    PIL image."""
    rgb = utils.convert_image_to_rgb(sample["image"].permute(1, 2, 0), image_format)
    canvas = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGBA")

    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if "sem_seg" in sample:
        sem = sample["sem_seg"].numpy()
        stuff_colors = metadata.get("stuff_colors")
        layer = np.zeros((*sem.shape, 4), dtype=np.uint8)
        for label in np.unique(sem):
            if label == metadata.get("ignore_label", 255):
                continue
            if stuff_colors is not None and label < len(stuff_colors):
                c = stuff_colors[label]
            else:
                c = category_color(100 + int(label))
            layer[sem == label] = (*c, 90)
        overlay = Image.alpha_composite(overlay, Image.fromarray(layer, "RGBA"))
        draw = ImageDraw.Draw(overlay)

    instances = sample.get("instances")
    names = metadata.get("thing_classes") or []
    if instances is not None:
        boxes = instances.gt_boxes.tensor.numpy()
        classes = instances.gt_classes.numpy()
        masks = instances.get("gt_masks") if instances.has("gt_masks") else None
        keypoints = instances.gt_keypoints.tensor.numpy() if instances.has("gt_keypoints") else None
        for i, (box, cls) in enumerate(zip(boxes, classes)):
            color = _color(metadata, int(cls))
            if masks is not None:
                if hasattr(masks, "polygons"):
                    for poly in masks.polygons[i]:
                        draw.polygon([tuple(p) for p in poly.reshape(-1, 2)], fill=(*color, 80), outline=(*color, 255))
                else:
                    m = masks.tensor[i].numpy()
                    layer = np.zeros((*m.shape, 4), dtype=np.uint8)
                    layer[m] = (*color, 90)
                    overlay = Image.alpha_composite(overlay, Image.fromarray(layer, "RGBA"))
                    draw = ImageDraw.Draw(overlay)
            draw.rectangle([float(v) for v in box], outline=(*color, 255), width=2)
            label = names[cls] if 0 <= cls < len(names) else str(int(cls))
            draw.text((float(box[0]) + 2, float(box[1]) + 1), label, fill=(255, 255, 255, 255))
            if keypoints is not None:
                _draw_keypoints(draw, keypoints[i], metadata)
    return Image.alpha_composite(canvas, overlay).convert("RGB")


def _draw_keypoints(draw: ImageDraw.ImageDraw, kpts: np.ndarray, metadata: Any) -> None:
    """kpts: (K, 3) of (x, y, visibility)."""
    names = list(metadata.get("keypoint_names") or [])
    visible = {i: (float(x), float(y)) for i, (x, y, v) in enumerate(kpts) if v > 0}
    for a, b, color in metadata.get("keypoint_connection_rules") or []:
        if a in names and b in names:
            ia, ib = names.index(a), names.index(b)
            if ia in visible and ib in visible:
                draw.line([visible[ia], visible[ib]], fill=(*color, 255), width=2)
    for i, (x, y) in visible.items():
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 0, 255), outline=(0, 0, 0, 255))
        if i < len(names):
            draw.text((x + 4, y - 4), names[i], fill=(255, 255, 0, 255))


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="registered dataset name (default: datasets.train[0])")
    parser.add_argument("--num", type=int, default=8, help="number of samples to draw")
    parser.add_argument("--output", default="vis", help="output folder")
    parser.add_argument("--mode", choices=("train", "test"), default="train", help="training or inference resizing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random augmentations")
    parser.add_argument("overrides", nargs="*", help="Hydra config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    cfg = get_cfg(args.overrides)
    register_shapes_from_cfg(cfg)
    name = args.dataset or list(cfg.datasets.train)[0]
    metadata = MetadataCatalog.get(name)
    dicts = DatasetCatalog.get(name)
    np.random.seed(args.seed)

    mapper_kwargs = DatasetMapper.from_config(cfg, is_train=True)
    if args.mode == "test":
        # Inference resizing, but keep the annotations to draw them.
        mapper_kwargs["augmentations"] = utils.build_augmentation(cfg, is_train=False)
    if mapper_kwargs["use_keypoint"] and "keypoint_hflip_indices" in mapper_kwargs and metadata.get("keypoint_names"):
        mapper_kwargs["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices([name])
    mapper = DatasetMapper(**mapper_kwargs)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for d in dicts[: args.num]:
        sample = mapper(d)
        img = draw_sample(sample, metadata, cfg.input.format)
        path = out_dir / f"{sample.get('image_id', len(written))}.png"
        img.save(path)
        written.append(path)
    logger.info("Wrote %d images to %s", len(written), out_dir)
    return written


if __name__ == "__main__":
    main()
