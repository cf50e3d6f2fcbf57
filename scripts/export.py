#!/usr/bin/env python
"""Export a detector to TorchScript (tracing) or ONNX and check the export against the eager model
(detectron2's tools/deploy/export_model.py, tracing path).

    python scripts/export.py --format torchscript --output exported/ \\
        model=mask_rcnn data=coco model.weights=model_final_f10217.pkl
    python scripts/export.py --format onnx --output exported/ --sample-image photo.jpg \\
        model=faster_rcnn data=coco model.weights=model_final_280758.pkl

Writes ``<output>/model.ts`` (TorchScript) or ``<output>/model.onnx`` and prints the number of detections and the
largest box / score differences between the exported and the eager model on the sample image. Exits with status 1
when they disagree (different detections, or a box coordinate further apart than ``--tolerance`` pixels).

The model is traced on the sample image (``--sample-image``, or else a built-in shapes image), prepared as
``DefaultPredictor`` prepares images: resized to ``input.min_size_test`` / ``input.max_size_test``, in the channel order
``input.format``, as a (3, H, W) float32 tensor. The exported graph takes images prepared the same way, of any size;
the batch size (1), the device and the config (thresholds, detections per image) are fixed by the trace.
Load the files with ``detlightning.export.load_torchscript`` / ``load_onnx`` to get the eager model's
``list[dict]`` outputs (rescaled to the ``"height"``/``"width"`` given), or run them with plain ``torch.jit.load``
/ onnxruntime on the flat tensors. ONNX needs ``pip install onnx onnxruntime``.

Config: Hydra overrides, positionally or after ``--config-overrides`` (``model=``, ``backbone=``, ``data=``,
``model.weights=``, ``model.device=cuda``, ``d2_config=<detectron2 yaml>``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlightning.cli import setup_cfg as setup_run_cfg
from detlightning.data.datasets.shapes import ShapesParams, _draw_image
from detlightning.data.detection_utils import read_image
from detlightning.engine import DefaultPredictor
from detlightning.export import export_onnx, export_torchscript, load_onnx, load_torchscript
from detlightning.export.onnx import DEFAULT_OPSET

logger = logging.getLogger("export")

FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


class ExportError(Exception):
    """A user-facing problem (bad image path, missing onnx package): printed without a traceback."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=sorted(FILE_NAMES), required=True, help="export format")
    parser.add_argument("--output", required=True, help="folder for model.ts / model.onnx")
    parser.add_argument("--sample-image", default=None,
                        help="image to trace on and to check the export with (default: a built-in shapes image)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest box coordinate difference (pixels) accepted by the check (default 1e-3)")
    parser.add_argument("--config-overrides", "--opts", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help="Hydra config overrides (same as the positional ones)")
    parser.add_argument("overrides", nargs="*", help="Hydra config overrides, e.g. model=mask_rcnn model.weights=x.pth")
    return parser


def setup_cfg(overrides: list[str]) -> DictConfig:
    """The config from Hydra ``overrides`` (with ``d2_config=``: the detectron2 yaml, command-line keys win)."""
    return setup_run_cfg(list(overrides))


def sample_image_bgr(path: str | None, cfg: DictConfig) -> np.ndarray:
    """(H, W, 3) uint8 BGR (what ``DefaultPredictor`` takes): the file at ``path``, or a built-in shapes image."""
    if path is not None:
        try:
            return read_image(path, format="BGR")
        except (FileNotFoundError, ValueError) as e:
            raise ExportError(f"--sample-image: {e}") from e
    size = int(OmegaConf.select(cfg, "datasets.shapes.image_size", default=256) or 256)
    rgb, _, _ = _draw_image(0, ShapesParams(image_size=size))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def prepare_input(predictor: DefaultPredictor, image_bgr: np.ndarray) -> dict[str, Any]:
    """The model input ``DefaultPredictor`` would build for ``image_bgr``."""
    image = image_bgr[:, :, ::-1] if predictor.input_format == "RGB" else image_bgr
    height, width = image.shape[:2]
    resized = predictor.aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))
    return {"image": tensor.to(predictor.device), "height": height, "width": width}


def compare(eager: Any, exported: Any) -> dict[str, Any]:
    """Detections and largest differences between two ``Instances`` (or proposals) of the same image.

    Detections with equal scores may come in another order (the traced graph always uses the coordinate-offset
    batched NMS, eager mode a per-class loop for many boxes), so each eager detection is paired with the unused
    exported one of the same class whose box is closest, in the eager order."""
    boxes_key = "pred_boxes" if eager.has("pred_boxes") else "proposal_boxes"
    scores_key = "scores" if eager.has("scores") else "objectness_logits"
    out: dict[str, Any] = {"eager": len(eager), "exported": len(exported)}
    if len(eager) != len(exported):
        return out
    a, b = eager.get(boxes_key).tensor.cpu(), exported.get(boxes_key).tensor.cpu()
    sa, sb = eager.get(scores_key).cpu(), exported.get(scores_key).cpu()
    if len(a) == 0:
        out.update(max_box_diff=0.0, max_score_diff=0.0, classes_equal=True, same_order=True)
        return out
    cost = (a[:, None, :] - b[None, :, :]).abs().amax(dim=2)  # (N, N) L-inf box distance
    if eager.has("pred_classes"):
        cost[eager.pred_classes.cpu()[:, None] != exported.pred_classes.cpu()[None, :]] = float("inf")
    pairs = []
    for i in range(len(a)):
        j = int(cost[i].argmin())
        pairs.append(j)
        cost[:, j] = float("inf")
    idx = torch.tensor(pairs)
    out["same_order"] = pairs == list(range(len(pairs)))
    out["max_box_diff"] = float((a - b[idx]).abs().max())
    out["max_score_diff"] = float((sa - sb[idx]).abs().max())
    if eager.has("pred_classes"):
        out["classes_equal"] = bool(torch.equal(eager.pred_classes.cpu(), exported.pred_classes.cpu()[idx]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Export and check; returns ``{"path", "check": {...}, "ok"}``."""
    args = get_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    cfg = setup_cfg([*args.config_overrides, *args.overrides])
    image = sample_image_bgr(args.sample_image, cfg)
    predictor = DefaultPredictor(cfg)
    model = predictor.model
    inputs = [prepare_input(predictor, image)]

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAMES[args.format]
    if args.format == "torchscript":
        export_torchscript(model, inputs, path)
        exported = load_torchscript(path)
    else:
        try:
            export_onnx(model, inputs, path, opset=args.opset)
            exported = load_onnx(path)
        except ImportError as e:
            raise ExportError(str(e)) from e
    logger.info("wrote %s", path)

    with torch.no_grad():
        eager_out = model(inputs)[0]
    exported_out = exported(inputs)[0]
    key = exported.output_key
    check = compare(eager_out[key], exported_out[key])
    ok = (
        check["eager"] == check["exported"]
        and check.get("max_box_diff", 0.0) <= args.tolerance
        and check.get("classes_equal", True)
    )
    image_shape = tuple(inputs[0]["image"].shape)
    print(f"exported {args.format}: {path}")
    print(f"check on a {image_shape} image: {check['eager']} eager / {check['exported']} exported detections", end="")
    if "max_box_diff" in check:
        print(f", max box difference {check['max_box_diff']:.3g} px, max score difference "
              f"{check['max_score_diff']:.3g}", end="")
    if "classes_equal" in check:
        print(f", classes {'equal' if check['classes_equal'] else 'DIFFER'}", end="")
    if check.get("same_order") is False:
        print(" (same detections, tied scores in another order)" if ok else "", end="")
    print(f" -> {'OK' if ok else 'MISMATCH'}")
    return {"path": str(path), "check": check, "ok": ok}


if __name__ == "__main__":
    try:
        result = main()
    except ExportError as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if result["ok"] else 1)
