#!/usr/bin/env python
"""Check datasets before training: read every annotation and image header (not the pixels) once and print every
problem found, grouped by kind with counts. Exit status 1 when there are errors, 0 otherwise (warnings only).

    python scripts/validate_data.py coco_2017_train coco_2017_val
    python scripts/validate_data.py --coco my_train annotations/train.json images/train/
    python scripts/validate_data.py tshapes_train datasets.shapes.prefix=tshapes     # Hydra overrides register
    python scripts/validate_data.py                                  # datasets.train and datasets.test

Errors: what would stop training or make it learn wrong targets (wrong types such as ``iscrowd: "0"``,
non-finite/out-of-range/negative boxes, unknown categories, missing or unreadable images, image sizes that differ
from the annotation). Warnings: what loading or training drops or converts (zero-size boxes, boxes outside the
image, empty segmentations, 16-bit images). ``dataloader.validate=true`` runs the same check before training.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlightning.cli import setup_cfg
from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import register_coco_instances
from detlightning.data.validate import ValidationReport, validate_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "items", nargs="*", metavar="DATASET|OVERRIDE",
        help="registered dataset names, and Hydra overrides (key=value) of the config that registers them",
    )  # fmt: skip
    parser.add_argument(
        "--coco", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format json under NAME and check it (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-images", action="store_true", help="check annotations only, not the image files")
    parser.add_argument("--max-per-kind", type=int, default=None, help="print at most N problems of each kind")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the report says everything; loader warnings would repeat it

    overrides = [x for x in args.items if "=" in x]
    names = [x for x in args.items if "=" not in x]
    cfg = setup_cfg(overrides)  # registers the config's datasets (e.g. the built-in shapes)
    for name, json_file, image_root in args.coco:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    if not names:
        names = list(dict.fromkeys(list(cfg.datasets.train or []) + list(cfg.datasets.test or [])))
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        print(f"Unknown dataset(s) {unknown}; registered: {sorted(DatasetCatalog.list())}", file=sys.stderr)
        return 2
    report: ValidationReport = validate_datasets(names, check_images=not args.no_images)
    print(report.format(max_per_kind=args.max_per_kind))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
