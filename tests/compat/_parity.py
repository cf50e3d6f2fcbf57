"""Shared helpers for the detectron2-parity tests: reference weights, model building, output comparison.

The tolerances are those of ../shared/compat/README.md.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
from dataclasses import dataclass

import numpy as np
import torch

from detlightning.evaluation.compare import greedy_box_match
from tests.conftest import COMPAT_DIR

# compat architecture -> our config overrides (the equivalent of its detectron2 model-zoo yaml)
ARCH_OVERRIDES: dict[str, list[str]] = {
    "faster_rcnn_R_50_FPN": ["model=faster_rcnn", "backbone=resnet50", "data=coco"],
    "mask_rcnn_R_50_FPN": ["model=mask_rcnn", "backbone=resnet50", "data=coco"],
    "keypoint_rcnn_R_50_FPN": ["model=keypoint_rcnn", "backbone=resnet50", "data=coco_keypoints"],
    "faster_rcnn_R_50_C4": ["model=faster_rcnn_c4", "backbone=resnet50_c4", "data=coco"],
    "mask_rcnn_X_101_32x8d_FPN": ["model=mask_rcnn", "backbone=resnext101_32x8d", "data=coco"],
    # Misc/mask_rcnn_R_50_FPN_3x_gn.yaml
    "mask_rcnn_R_50_FPN_gn": [
        "model=mask_rcnn",
        "backbone=resnet50",
        "data=coco",
        "model.resnets.norm=GN",
        "model.resnets.stride_in_1x1=false",
        "model.fpn.norm=GN",
        "model.roi_box_head.num_conv=4",
        "model.roi_box_head.num_fc=1",
        "model.roi_box_head.norm=GN",
        "model.roi_mask_head.norm=GN",
    ],
}

TOL = {
    "match_fraction": 0.97,
    "box": 0.05,
    "score": 1e-3,
    "mask_iou": 0.99,
    "keypoint": 0.5,
    "proposal_fraction": 0.97,
}


def _import_compat(name: str):
    path = COMPAT_DIR / f"{name}.py"
    mod_name = f"_dl_compat_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    if str(COMPAT_DIR) not in sys.path:
        sys.path.insert(0, str(COMPAT_DIR))  # c2_backbone.py imports its sibling "weights"
    spec.loader.exec_module(module)
    return module


def manifest(arch: str) -> dict:
    return json.loads((COMPAT_DIR / arch / "manifest.json").read_text())


@functools.lru_cache(maxsize=None)
def reference_weights(arch: str) -> dict[str, torch.Tensor]:
    m = manifest(arch)
    return _import_compat("weights").make_weights(m["shapes"], m["seed"])


def c2_backbone(arch: str) -> tuple[dict, dict]:
    m = manifest(arch)
    return _import_compat("c2_backbone").make_c2_backbone(m["shapes"], m["seed"])


def build(arch: str):
    from detlightning.config import compose
    from detlightning.modeling import build_model

    cfg = compose(ARCH_OVERRIDES[arch] + ["model.device=cpu"])
    return build_model(cfg).eval()


def build_from_zoo_yaml(arch: str):
    """detectron2's own flow for ``arch``: ``get_cfg()`` + ``merge_from_file`` of the zoo yaml its manifest names +
    ``build_model(cfg)``, on CPU, in eval mode. The CfgNode is read in place, never converted."""
    from detlightning import model_zoo
    from detlightning.config import get_cfg
    from detlightning.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(manifest(arch)["detectron2_config"]))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).eval()


def load_reference_weights(model, arch: str):
    """``model`` with detectron2's reference weights for ``arch``, loaded from a ``.pth`` file as a user would."""
    import tempfile

    from detlightning.checkpoint import DetectionCheckpointer

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.pth"
        torch.save({"model": reference_weights(arch), "iteration": 0}, path)
        DetectionCheckpointer(model).load(path)
    return model


def reference_input() -> dict:
    return torch.load(COMPAT_DIR / "inputs" / "astronaut.pt", weights_only=True)


def reference_output(arch: str) -> dict:
    return torch.load(COMPAT_DIR / arch / "astronaut.pt", weights_only=True)


@dataclass
class Match:
    ref_idx: list[int]
    our_idx: list[int]
    num_ref: int

    @property
    def fraction(self) -> float:
        return len(self.ref_idx) / max(self.num_ref, 1)


def greedy_match(ref_boxes: torch.Tensor, our_boxes: torch.Tensor, *classes: torch.Tensor) -> Match:
    """``detlightning.evaluation.compare.greedy_box_match`` (IoU > 0.99; same class when ``classes`` gives the
    reference's and ours) as a :class:`Match`."""
    return Match(*greedy_box_match(ref_boxes, our_boxes, *classes), len(ref_boxes))


def decode_rle_masks(rles: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_util

    return np.stack([mask_util.decode(r) for r in rles]).astype(bool) if rles else np.zeros((0, 0, 0), bool)


def compare_instances(ref: dict, ours) -> dict[str, float]:
    """Parity figures of our Instances against detectron2's stored instance outputs."""
    m = greedy_match(ref["pred_boxes"], ours.pred_boxes.tensor, ref["pred_classes"], ours.pred_classes)
    out = {"match_fraction": m.fraction, "num_ref": m.num_ref, "num_ours": len(ours)}
    r, o = torch.tensor(m.ref_idx, dtype=torch.long), torch.tensor(m.our_idx, dtype=torch.long)
    out["box"] = float((ref["pred_boxes"][r] - ours.pred_boxes.tensor[o]).abs().max()) if len(r) else 0.0
    out["score"] = float((ref["scores"][r] - ours.scores[o]).abs().max()) if len(r) else 0.0
    if "pred_masks" in ref:
        ref_masks = decode_rle_masks([ref["pred_masks"][i] for i in m.ref_idx])
        our_masks = ours.pred_masks[o].cpu().numpy().astype(bool)
        inter = (ref_masks & our_masks).reshape(len(r), -1).sum(1)
        union = (ref_masks | our_masks).reshape(len(r), -1).sum(1)
        out["mask_iou"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    if "pred_keypoints" in ref:
        diff = (ref["pred_keypoints"][r][..., :2] - ours.pred_keypoints[o][..., :2]).abs()
        out["keypoint"] = float(diff.max()) if len(r) else 0.0
    return out


def assert_parity(figures: dict[str, float]) -> None:
    problems = []
    if figures["match_fraction"] < TOL["match_fraction"]:
        problems.append(f"matched fraction {figures['match_fraction']:.3f} < {TOL['match_fraction']}")
    for key in ("box", "score", "keypoint"):
        if key in figures and figures[key] > TOL[key]:
            problems.append(f"max abs {key} difference {figures[key]:.5g} > {TOL[key]}")
    if "mask_iou" in figures and figures["mask_iou"] < TOL["mask_iou"]:
        problems.append(f"mean mask IoU {figures['mask_iou']:.4f} < {TOL['mask_iou']}")
    assert not problems, f"detectron2 parity failed: {problems}; figures: {figures}"


# Tolerances of the special outputs (README: sem_seg argmax agreement; objectness of matched proposals: the score
# tolerance, applied to logits).
TOL["objectness"] = 1e-3
TOL["sem_seg_agreement"] = 0.999


def compare_proposals(ref: dict, ours) -> dict[str, float]:
    """Parity figures of our proposals (``proposal_boxes``, ``objectness_logits``) against detectron2's stored ones:
    class-free greedy IoU > 0.99 matching, then max abs box / objectness-logit differences of the matched pairs."""
    ref_boxes, our_boxes = ref["proposal_boxes"], ours.proposal_boxes.tensor
    m = greedy_match(ref_boxes, our_boxes)
    r, o = torch.tensor(m.ref_idx, dtype=torch.long), torch.tensor(m.our_idx, dtype=torch.long)
    out = {"proposal_fraction": m.fraction, "num_ref": m.num_ref, "num_ours": len(ours)}
    out["box"] = float((ref_boxes[r] - our_boxes[o]).abs().max()) if len(r) else 0.0
    out["objectness"] = float((ref["objectness_logits"][r] - ours.objectness_logits[o]).abs().max()) if len(r) else 0.0
    return out
