#!/usr/bin/env python
"""Write annotated PNGs of what the model sees: dataset dicts after the DatasetMapper (image reading, format
conversion, augmentations, annotation transforms).

    python scripts/visualize_data.py --dataset shapes_train --num 8 --output vis/ [--mode train|test]
        [--seed 0] [overrides ...]

``overrides`` are Hydra overrides of the config (e.g. ``model=mask_rcnn model.keypoint_on=true
input.min_size_train=[320]``); masks and keypoints are drawn when the config turns them on (``model.mask_on``,
``model.keypoint_on``). ``--mode test`` uses the inference resizing but keeps the annotations.
Boxes, class labels, polygon/bit masks, keypoints (with the dataset's skeleton) and semantic maps are drawn with
:class:`detlightning.utils.visualizer.Visualizer` in the class colours; each file is ``<image_id>.png``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlightning.cli import setup_cfg
from detlightning.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detlightning.data import detection_utils as utils
from detlightning.data.datasets.builtin_meta import category_color
from detlightning.utils.visualizer import VisImage, Visualizer

logger = logging.getLogger("visualize_data")


def _color(metadata: Any, class_id: int) -> tuple[float, float, float]:
    """The class colour as RGB floats in [0, 1]: ``thing_colors`` when the metadata has one for ``class_id``."""
    colors = metadata.get("thing_colors")
    if colors is not None and 0 <= class_id < len(colors):
        rgb = colors[class_id]
    else:
        rgb = category_color(class_id)
    return tuple(float(c) / 255.0 for c in rgb)  # type: ignore[return-value]


class _DataVisualizer(Visualizer):
    """The Visualizer with opaque box outlines: every box of a class has exactly the class colour, which makes
    annotation errors (wrong class, shifted box) easy to spot."""

    def draw_box(self, box_coord: Any, alpha: float = 1.0, edge_color: Any = "g", line_style: str = "-") -> VisImage:
        return super().draw_box(box_coord, alpha=alpha, edge_color=edge_color, line_style=line_style)


def draw_sample(sample: dict[str, Any], metadata: Any, image_format: str) -> Image.Image:
    """The mapped ``sample`` ("image" (C, H, W) tensor, optional "instances" / "sem_seg") as an annotated RGB
    PIL image: semantic map, then boxes, class names, masks and keypoints in the class colours."""
    rgb = utils.convert_image_to_rgb(sample["image"].permute(1, 2, 0), image_format)
    vis = _DataVisualizer(rgb, metadata)
    if "sem_seg" in sample:
        vis.draw_sem_seg(sample["sem_seg"], area_threshold=0, alpha=0.5)
    instances = sample.get("instances")
    if instances is not None and len(instances) > 0:
        classes = [int(c) for c in instances.gt_classes.tolist()]
        names = metadata.get("thing_classes") or []
        vis.overlay_instances(
            boxes=instances.gt_boxes if instances.has("gt_boxes") else None,
            labels=[names[c] if 0 <= c < len(names) else str(c) for c in classes],
            masks=instances.gt_masks if instances.has("gt_masks") else None,
            keypoints=instances.gt_keypoints if instances.has("gt_keypoints") else None,
            assigned_colors=[_color(metadata, c) for c in classes],
        )
    return Image.fromarray(vis.output.get_image())


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

    cfg = setup_cfg(args.overrides)
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
