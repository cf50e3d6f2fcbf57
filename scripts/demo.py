#!/usr/bin/env python
"""Run a model on images (or videos) and write annotated PNGs plus JSON detections (detectron2's demo/demo.py).

    python scripts/demo.py --input photo.jpg 'shots/*.png' folder/ --output out/ \\
        model=mask_rcnn model.weights=output/checkpoints/model_final.pth
    python scripts/demo.py --input img.jpg --output out/ --confidence-threshold 0.7 \\
        --config-overrides model=mask_rcnn backbone=resnet101 data=coco model.weights=model_final_f10217.pkl
    python scripts/demo.py --input clip.mp4 --output out/ model.weights=...     # needs OpenCV

``--input``: image files, globs (quote them) and folders (their images, sorted; not recursive). Video files
(.mp4, .avi, .mov, .mkv, ...) need OpenCV (``pip install opencv-python-headless``) and give ``<name>.mp4`` with
every frame annotated plus ``<name>.json`` with one entry per frame.

Config: Hydra overrides, given positionally or after ``--config-overrides`` (``model=``, ``backbone=``,
``data=``, ``model.weights=`` (.pth/.pkl/.ckpt), ``model.device=cuda``, ``d2_config=<detectron2 yaml>``).
Class names come from the metadata of ``datasets.test[0]`` (``data=coco``: COCO's names).
``--confidence-threshold`` sets ``model.retinanet.score_thresh_test``, ``model.roi_heads.score_thresh_test`` and
``model.panoptic_fpn.combine.instances_confidence_thresh`` (after the overrides, as detectron2's demo does).

Per image ``<output>/<name>.png`` (the annotated image) and ``<output>/<name>.json``::

    {"file_name": ..., "height": H, "width": W,
     "instances": [{"bbox": [x0, y0, x1, y1], "bbox_mode": "XYXY_ABS", "score": s, "category_id": c,
                    "category_name": "person", "segmentation": {"size": [H, W], "counts": "<COCO RLE>"},
                    "keypoints": [[x, y, score], ...]}, ...],
     "sem_seg": [{"category_id": c, "category_name": ..., "area": pixels}, ...],          (semantic models)
     "panoptic_seg": {"segments_info": [{"id", "category_id", "category_name", "isthing", ...}, ...]}}

Boxes, masks and keypoints are in the original image's pixels; "segmentation" / "keypoints" appear when the model
predicts masks / keypoints. Unreadable images stop the run with an error naming the file, or are skipped with a
warning under ``--skip-bad``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlightning.cli import setup_cfg as setup_run_cfg
from detlightning.data import MetadataCatalog
from detlightning.data.detection_utils import read_image
from detlightning.engine import DefaultPredictor
from detlightning.utils.visualizer import ColorMode, VisImage, Visualizer

logger = logging.getLogger("demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
THRESHOLD_KEYS = (
    "model.retinanet.score_thresh_test",
    "model.roi_heads.score_thresh_test",
    "model.panoptic_fpn.combine.instances_confidence_thresh",
)
_MODES = {"image": ColorMode.IMAGE, "segmentation": ColorMode.SEGMENTATION, "image_bw": ColorMode.IMAGE_BW}


class DemoError(Exception):
    """A user-facing problem (bad input path, unreadable image, missing OpenCV): printed without a traceback."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs, folders or video files")
    parser.add_argument("--output", required=True, help="folder for the annotated PNGs and JSON files")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the detections kept (default 0.5)")
    parser.add_argument("--config-overrides", "--opts", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help="Hydra config overrides (same as the positional ones)")
    parser.add_argument("--instance-mode", choices=sorted(_MODES), default="image",
                        help="colouring: random per instance, per class (segmentation) or grey background")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    parser.add_argument("overrides", nargs="*", help="Hydra config overrides, e.g. model=mask_rcnn model.weights=x.pth")
    return parser


def setup_cfg(overrides: list[str], confidence_threshold: float) -> DictConfig:
    """Compose the config from ``overrides`` and set the test score thresholds to ``confidence_threshold``."""
    cfg = setup_run_cfg(list(overrides))
    for key in THRESHOLD_KEYS:
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, float(confidence_threshold))
    return cfg


def expand_inputs(specs: list[str]) -> list[Path]:
    """Files for ``--input``: files as given, glob matches and folder contents (images only), sorted per spec,
    duplicates dropped. Raises DemoError for a spec that matches nothing."""
    out: list[Path] = []
    for spec in specs:
        expanded = os.path.expanduser(spec)
        if any(ch in expanded for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DemoError(f"--input {spec!r}: no files match this pattern")
            out.extend(matches)
        elif os.path.isdir(expanded):
            images = sorted(p for p in Path(expanded).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise DemoError(f"--input {spec!r}: the folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(images)
        elif os.path.isfile(expanded):
            out.append(Path(expanded))
        else:
            raise DemoError(f"--input {spec!r}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def draw_predictions(image_rgb: np.ndarray, predictions: dict[str, Any], metadata: Any,
                     instance_mode: ColorMode = ColorMode.IMAGE) -> VisImage:
    """The model's outputs for one image drawn on it: the panoptic segmentation, or else the semantic
    segmentation and/or the instances (as detectron2's demo does)."""
    vis = Visualizer(image_rgb, metadata, instance_mode=instance_mode)
    cpu = torch.device("cpu")
    if "panoptic_seg" in predictions:
        seg, segments_info = predictions["panoptic_seg"]
        vis.draw_panoptic_seg(seg.to(cpu), segments_info)
        return vis.output
    if "sem_seg" in predictions:
        vis.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to(cpu))
    if "instances" in predictions:
        vis.draw_instance_predictions(predictions["instances"].to(cpu))
    elif "proposals" in predictions:  # ProposalNetwork: draw the 20 best proposals
        props = predictions["proposals"].to(cpu)
        vis.overlay_instances(boxes=props.proposal_boxes[:20])
    return vis.output


def _name(names: Any, idx: int) -> str | None:
    return str(names[idx]) if names and 0 <= idx < len(names) else None


def predictions_to_json(predictions: dict[str, Any], metadata: Any) -> dict[str, Any]:
    """JSON-serialisable summary of the model's outputs for one image (format in the module docstring)."""
    out: dict[str, Any] = {}
    meta_get = metadata.get if metadata is not None else (lambda key, default=None: default)
    thing_names = meta_get("thing_classes")
    if "instances" in predictions:
        inst = predictions["instances"].to("cpu")
        n = len(inst)
        boxes = inst.pred_boxes.tensor.tolist() if inst.has("pred_boxes") else [None] * n
        scores = inst.scores.tolist() if inst.has("scores") else [None] * n
        classes = inst.pred_classes.tolist() if inst.has("pred_classes") else [None] * n
        rles: list[Any] = [None] * n
        if inst.has("pred_masks") and n:
            masks = inst.pred_masks.numpy().astype(np.uint8)  # (N, H, W)
            rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        keypoints = inst.pred_keypoints.tolist() if inst.has("pred_keypoints") else [None] * n
        records = []
        for i in range(n):
            rec: dict[str, Any] = {"bbox": boxes[i], "bbox_mode": "XYXY_ABS", "score": scores[i],
                                   "category_id": classes[i],
                                   "category_name": _name(thing_names, classes[i]) if classes[i] is not None else None}
            if rles[i] is not None:
                rec["segmentation"] = {"size": [int(v) for v in rles[i]["size"]],
                                       "counts": rles[i]["counts"].decode("ascii")}
            if keypoints[i] is not None:
                rec["keypoints"] = keypoints[i]
            records.append(rec)
        out["instances"] = records
    stuff_names = meta_get("stuff_classes")
    if "sem_seg" in predictions and "panoptic_seg" not in predictions:
        labels, areas = torch.unique(predictions["sem_seg"].argmax(dim=0).cpu(), return_counts=True)
        out["sem_seg"] = [{"category_id": int(c), "category_name": _name(stuff_names, int(c)), "area": int(a)}
                          for c, a in zip(labels.tolist(), areas.tolist())]
    if "panoptic_seg" in predictions:
        seg, segments_info = predictions["panoptic_seg"]
        infos = []
        for s in segments_info or []:
            rec = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
            cat = int(rec.get("category_id", -1))
            rec["category_name"] = _name(thing_names if rec.get("isthing") else stuff_names, cat)
            infos.append(rec)
        out["panoptic_seg"] = {"segments_info": infos}
    return out


class _Namer:
    """Output names from input stems, made unique (``a``, ``a_1``, ...)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, path: Path) -> str:
        stem, k = path.stem, 0
        name = stem
        while name in self._used:
            k += 1
            name = f"{stem}_{k}"
        self._used.add(name)
        return name


def run_on_image(predictor: DefaultPredictor, path: Path, out_dir: Path, name: str, metadata: Any,
                 instance_mode: ColorMode) -> tuple[Path, Path]:
    """Predict on the image at ``path``; write ``<name>.png`` and ``<name>.json`` into ``out_dir``."""
    try:
        image_bgr = read_image(str(path), format="BGR")
    except (FileNotFoundError, ValueError) as e:
        raise DemoError(str(e)) from e
    start = time.perf_counter()
    predictions = predictor(image_bgr)
    elapsed = time.perf_counter() - start
    n = len(predictions["instances"]) if "instances" in predictions else None
    logger.info("%s: %s in %.2fs", path, f"{n} instances" if n is not None else "done", elapsed)
    png = out_dir / f"{name}.png"
    draw_predictions(image_bgr[:, :, ::-1], predictions, metadata, instance_mode).save(png)
    record = {"file_name": str(path), "height": int(image_bgr.shape[0]), "width": int(image_bgr.shape[1]),
              **predictions_to_json(predictions, metadata)}
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(record))
    return png, js


def run_on_video(predictor: DefaultPredictor, path: Path, out_dir: Path, name: str, metadata: Any,
                 instance_mode: ColorMode) -> tuple[Path, Path]:
    """Annotate every frame of the video at ``path``: ``<name>.mp4`` and ``<name>.json`` (one entry per frame)."""
    try:
        import cv2
    except ImportError as e:
        raise DemoError(f"{path}: reading videos needs OpenCV (pip install opencv-python-headless); "
                        "images work without it") from e
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: OpenCV cannot open this video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video_out = out_dir / f"{name}.mp4"
    writer = cv2.VideoWriter(str(video_out), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    frames = []
    try:
        index = 0
        while True:
            ok, frame_bgr = cap.read()
            if not ok:
                break
            predictions = predictor(frame_bgr)
            vis = draw_predictions(frame_bgr[:, :, ::-1], predictions, metadata, instance_mode).get_image()
            writer.write(np.ascontiguousarray(vis[:, :, ::-1]))
            frames.append({"frame_index": index, **predictions_to_json(predictions, metadata)})
            index += 1
    finally:
        cap.release()
        writer.release()
    logger.info("%s: %d frames -> %s", path, len(frames), video_out)
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps({"file_name": str(path), "height": height, "width": width, "fps": fps,
                              "frames": frames}))
    return video_out, js


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the demo; returns the written files (PNG/MP4 and JSON per input)."""
    args = get_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    inputs = expand_inputs(args.input)
    videos = [p for p in inputs if p.suffix.lower() in VIDEO_EXTENSIONS]
    if videos and importlib.util.find_spec("cv2") is None:  # fail before building the model
        msg = f"{videos[0]}: reading videos needs OpenCV (pip install opencv-python-headless); images work without it"
        if not args.skip_bad:
            raise DemoError(msg)
        logger.warning("skipping %d video(s): %s", len(videos), msg)
        inputs = [p for p in inputs if p not in videos]
    cfg = setup_cfg([*args.config_overrides, *args.overrides], args.confidence_threshold)
    predictor = DefaultPredictor(cfg)
    metadata = predictor.metadata if predictor.metadata is not None else MetadataCatalog.get("__unused__")
    mode = _MODES[args.instance_mode]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    namer = _Namer()
    written: list[Path] = []
    skipped = 0
    for path in inputs:
        run = run_on_video if path.suffix.lower() in VIDEO_EXTENSIONS else run_on_image
        try:
            written.extend(run(predictor, path, out_dir, namer(path), metadata, mode))
        except DemoError as e:
            if not args.skip_bad:
                raise
            logger.warning("skipping %s: %s", path, e)
            skipped += 1
    logger.info("Wrote %d files to %s%s", len(written), out_dir, f" ({skipped} inputs skipped)" if skipped else "")
    return written


if __name__ == "__main__":
    try:
        main()
    except DemoError as err:
        print(f"demo.py: error: {err}", file=sys.stderr)
        sys.exit(1)
