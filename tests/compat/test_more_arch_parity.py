"""detectron2 parity of RetinaNet, Panoptic FPN and Cascade Mask R-CNN: state-dict keys/shapes against the
manifests, and eval outputs on the stored input against detectron2's (tolerances of ../shared/compat/README.md)."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

OVERRIDES = {
    "retinanet_R_50_FPN": ["model=retinanet", "backbone=resnet50", "data=coco"],
    "panoptic_fpn_R_50": ["model=panoptic_fpn", "backbone=resnet50", "data=coco_panoptic"],
    "cascade_mask_rcnn_R_50_FPN": ["model=cascade_mask_rcnn", "backbone=resnet50", "data=coco"],
}
SEM_SEG_AGREEMENT = 0.999
PANOPTIC_AGREEMENT = 0.99


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    from detlightning.config import compose
    from detlightning.modeling import build_model

    return build_model(compose(OVERRIDES[arch] + ["model.device=cpu"])).eval()


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    return P.load_reference_weights(_model(arch), arch)


@functools.lru_cache(maxsize=None)
def _outputs(arch: str) -> dict:
    with torch.no_grad():
        return _loaded_model(arch)([P.reference_input()])[0]


@pytest.mark.parametrize("arch", list(OVERRIDES))
def test_state_dict_matches_detectron2_manifest(arch):
    ours = {k: list(v.shape) for k, v in _model(arch).state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


def test_retinanet_eval_outputs_match_detectron2():
    inp = P.reference_input()
    out = _outputs("retinanet_R_50_FPN")["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    P.assert_parity(P.compare_instances(P.reference_output("retinanet_R_50_FPN")["instances"], out))


def test_panoptic_instances_match_detectron2():
    out = _outputs("panoptic_fpn_R_50")["instances"]
    P.assert_parity(P.compare_instances(P.reference_output("panoptic_fpn_R_50")["instances"], out))


def test_panoptic_sem_seg_matches_detectron2():
    inp = P.reference_input()
    ref = P.reference_output("panoptic_fpn_R_50")
    sem_seg = _outputs("panoptic_fpn_R_50")["sem_seg"]
    assert sem_seg.shape == (54, inp["height"], inp["width"])
    agreement = (sem_seg.argmax(0) == ref["sem_seg_argmax"].long()).float().mean().item()
    assert agreement >= SEM_SEG_AGREEMENT, f"sem_seg argmax agrees on {agreement:.5f} of the pixels"


def _category_maps(panoptic_seg: torch.Tensor, segments_info: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel (category_id, isthing), -1 / -1 for void."""
    cat = torch.full(panoptic_seg.shape, -1, dtype=torch.long)
    thing = torch.full(panoptic_seg.shape, -1, dtype=torch.long)
    for s in segments_info:
        m = panoptic_seg.long() == s["id"]
        cat[m] = int(s["category_id"])
        thing[m] = int(s["isthing"])
    return cat, thing


def test_panoptic_seg_matches_detectron2():
    ref = P.reference_output("panoptic_fpn_R_50")
    panoptic_seg, segments_info = _outputs("panoptic_fpn_R_50")["panoptic_seg"]
    assert panoptic_seg.shape == ref["panoptic_seg"].shape
    ours_cat, ours_thing = _category_maps(panoptic_seg, segments_info)
    ref_cat, ref_thing = _category_maps(ref["panoptic_seg"], ref["segments_info"])
    agreement = ((ours_cat == ref_cat) & (ours_thing == ref_thing)).float().mean().item()
    assert agreement >= PANOPTIC_AGREEMENT, f"panoptic (category, isthing) agrees on {agreement:.5f} of the pixels"


def test_panoptic_segments_are_consistent_with_the_id_map():
    out = _outputs("panoptic_fpn_R_50")
    panoptic_seg, segments_info = out["panoptic_seg"]
    instances = out["instances"]
    assert panoptic_seg.dtype == torch.int32
    ids = [s["id"] for s in segments_info]
    assert ids == list(range(1, len(ids) + 1))
    present = set(torch.unique(panoptic_seg).tolist()) - {0}
    assert present == set(ids), "every segment covers pixels and every non-void pixel belongs to a segment"
    for s in segments_info:
        if s["isthing"]:
            assert set(s) == {"id", "isthing", "score", "category_id", "instance_id"}
            assert s["category_id"] == int(instances.pred_classes[s["instance_id"]])
            assert s["score"] == pytest.approx(float(instances.scores[s["instance_id"]]))
            # a thing segment lies inside its instance's mask
            seg_mask = panoptic_seg == s["id"]
            assert not (seg_mask & ~instances.pred_masks[s["instance_id"]].bool()).any()
        else:
            assert set(s) == {"id", "isthing", "category_id", "area"}
            assert s["area"] == int((panoptic_seg == s["id"]).sum())
            assert s["area"] >= 4096 and s["category_id"] != 0
