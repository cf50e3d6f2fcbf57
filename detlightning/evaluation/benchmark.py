"""Benchmark of the COCO evaluation core: ``COCOEvaluator`` (faster-coco-eval when installed) against plain
pycocotools on the same synthetic ground truth and results, in the same process.

``scripts/benchmark.py`` calls ``benchmark_coco_eval``; it can also be run directly:
``python -m detlightning.evaluation.benchmark --num-images 5000``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.catalog import MetadataCatalog
from .coco_evaluation import COCOEvaluator
from .fast_eval_api import FAST_COCOEVAL_AVAILABLE

__all__ = ["benchmark_coco_eval", "make_synthetic_coco"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 8) -> list[float]:
    """A star-convex polygon around (cx, cy) with jittered radii: flat [x0, y0, x1, y1, ...]."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    r = rng.uniform(0.6, 1.0, n)
    xs = cx + rx * r * np.cos(angles)
    ys = cy + ry * r * np.sin(angles)
    return np.stack([xs, ys], axis=1).reshape(-1).round(2).tolist()


def make_synthetic_coco(
    num_images: int, dets_per_image: int = 20, num_classes: int = 10, height: int = 480, width: int = 640,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO ground-truth dict (polygon instances, ~5% crowd, some images empty) and detection results
    (XYWH ``bbox`` + RLE ``segmentation`` with str counts) where about half of the detections overlap a ground
    truth object, the rest are scattered false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    categories = [{"id": 2 * c + 1, "name": f"class{c}"} for c in range(num_classes)]
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "height": height, "width": width, "file_name": f"{img_id:06d}.jpg"})
        num_gt = int(rng.integers(0, 9))
        gts = []
        for _ in range(num_gt):
            # sizes spread over COCO's small / medium / large ranges
            rx, ry = rng.uniform(4, 150, 2)
            cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
            poly = _polygon(rng, cx, cy, rx, ry)
            rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
            cat = categories[int(rng.integers(num_classes))]["id"]
            ann = {
                "id": len(annotations) + 1, "image_id": img_id, "category_id": cat, "segmentation": [poly],
                "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": int(rng.random() < 0.05),
            }
            annotations.append(ann)
            gts.append((cx, cy, rx, ry, cat, np.asarray(poly).reshape(-1, 2)))
        for d in range(dets_per_image):
            if gts and d < 2 * len(gts) and rng.random() < 0.8:
                # a localisation error of the matching ground truth: shifted and rescaled
                cx, cy, rx, ry, cat, pts = gts[d % len(gts)]
                shift = rng.normal(0, 0.08, 2) * (rx, ry)
                scale = rng.uniform(0.85, 1.15, 2)
                poly = ((pts - (cx, cy)) * scale + (cx, cy) + shift).reshape(-1).round(2).tolist()
                if rng.random() < 0.1:
                    cat = categories[int(rng.integers(num_classes))]["id"]
            else:
                rx, ry = rng.uniform(4, 120, 2)
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                cat = categories[int(rng.integers(num_classes))]["id"]
                poly = _polygon(rng, cx, cy, rx, ry)
            rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
            bbox = mask_util.toBbox(rle).tolist()
            if bbox[2] <= 0 or bbox[3] <= 0:
                continue
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append({"image_id": img_id, "category_id": cat, "bbox": bbox, "segmentation": rle,
                            "score": float(rng.uniform(0.5, 1.0) if d < 2 * len(gts) else rng.uniform(0, 0.7))})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def _pycocotools_eval(gt_file: str, results: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], float]:
    """Plain pycocotools, the way its README runs it (bbox, then segm with the box dropped as detectron2 does);
    returns the metrics and the seconds spent after loading the ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_file)
        start = time.perf_counter()
        out: dict[str, dict[str, float]] = {}
        for task in ("bbox", "segm"):
            if task == "bbox":
                res = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]
            else:
                res = [{k: r[k] for k in ("image_id", "category_id", "segmentation", "score")} for r in results]
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes(res), task)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            out[task] = {m: float(s * 100) if s >= 0 else float("nan") for m, s in zip(_METRICS, coco_eval.stats)}
        return out, time.perf_counter() - start


def benchmark_coco_eval(num_images: int = 5000, *, dets_per_image: int = 20, seed: int = 0,
                        use_fast_impl: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Seconds to evaluate ``num_images`` images of synthetic bbox + segm results with ``COCOEvaluator``'s
    evaluation core vs plain pycocotools, on the same data in the same run.

    Raises ``AssertionError`` if the two disagree on any metric (by more than 1e-9, in percent). Returns
    ``{"num_images", "num_detections", "backend", "detlightning_s", "pycocotools_s", "speedup", "results"}``.
    """
    gt, results = make_synthetic_coco(num_images, dets_per_image=dets_per_image, seed=seed)
    name = f"_benchmark_coco_eval_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="dl_bench_coco") as tmp:
        gt_file = os.path.join(tmp, "gt.json")
        with open(gt_file, "w") as f:
            json.dump(gt, f)
        MetadataCatalog.get(name).set(json_file=gt_file)  # dataset ids used directly as the model's class ids
        try:
            evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False,
                                      use_fast_impl=use_fast_impl)
            evaluator.reset()
            by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in gt["images"]}
            for r in results:
                by_image[r["image_id"]].append(r)
            # what process() would have accumulated: the timed part is evaluate(), i.e. the evaluation core
            evaluator._predictions = [{"image_id": i, "instances": rs} for i, rs in by_image.items()]
            with contextlib.redirect_stdout(io.StringIO()):
                start = time.perf_counter()
                ours = evaluator.evaluate()
                ours_s = time.perf_counter() - start
            ref, ref_s = _pycocotools_eval(gt_file, results)
        finally:
            MetadataCatalog.remove(name)

    for task in ("bbox", "segm"):
        for m in _METRICS:
            a, b = ours[task][m], ref[task][m]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (
                f"{task}/{m}: COCOEvaluator {a!r} != pycocotools {b!r}"
            )
    backend = "faster-coco-eval" if (use_fast_impl and FAST_COCOEVAL_AVAILABLE) else "pycocotools"
    report = {
        "num_images": num_images,
        "num_detections": len(results),
        "backend": backend,
        "detlightning_s": ours_s,
        "pycocotools_s": ref_s,
        "speedup": ref_s / ours_s if ours_s > 0 else float("inf"),
        "results": ours,
    }
    if verbose:
        print(
            f"COCO eval (bbox+segm), {num_images} images, {len(results)} detections: "
            f"detlightning COCOEvaluator [{backend}] {ours_s:.2f} s, pycocotools {ref_s:.2f} s "
            f"-> {report['speedup']:.1f}x; metrics identical (bbox AP {ours['bbox']['AP']:.3f}, "
            f"segm AP {ours['segm']['AP']:.3f})"
        )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=20)
    parser.add_argument("--reference-impl", action="store_true", help="use pycocotools inside COCOEvaluator too")
    args = parser.parse_args(argv)
    benchmark_coco_eval(args.num_images, dets_per_image=args.dets_per_image, use_fast_impl=not args.reference_impl)


if __name__ == "__main__":
    main()
