"""detectron2 parity of models built straight from the shipped zoo yaml (get_cfg() + merge_from_file): the
dilated-C5 Mask R-CNN and the deformable-conv (res3-res5) Mask R-CNN. State-dict keys/shapes against the manifests,
proposals and eval outputs on the stored input against detectron2's (tolerances of ../shared/compat/README.md)."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

ARCHS = ["mask_rcnn_R_50_DC5", "mask_rcnn_R_50_FPN_dconv"]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    """Our model for the zoo yaml the manifest names, in eval mode."""
    return P.build_from_zoo_yaml(arch)


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    return P.load_reference_weights(_model(arch), arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_detectron2_manifest(arch: str) -> None:
    ours = {k: list(v.shape) for k, v in _model(arch).state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


@pytest.mark.parametrize("arch", ARCHS)
def test_proposals_match_detectron2(arch: str) -> None:
    model = _loaded_model(arch)
    ref = P.reference_output(arch)
    with torch.no_grad():
        images = model.preprocess_image([P.reference_input()])
        assert list(images.tensor.shape[-2:]) == list(ref["padded_image_size"])
        proposals = model.proposal_generator(images, model.backbone(images.tensor), None)[0][0]
    match = P.greedy_match(ref["proposals"]["proposal_boxes"], proposals.proposal_boxes.tensor)
    assert match.fraction >= P.TOL["proposal_fraction"], f"{match.fraction:.3f} of the proposals matched"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs_match_detectron2(arch: str) -> None:
    inp = P.reference_input()
    with torch.no_grad():
        out = _loaded_model(arch)([inp])[0]["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(arch)["instances"]
    assert len(ref["pred_boxes"]) > 0
    P.assert_parity(P.compare_instances(ref, out))


def test_dc5_and_dconv_models_are_what_the_yaml_says() -> None:
    dc5 = _model("mask_rcnn_R_50_DC5")
    assert dc5.backbone.res5[0].conv2.dilation == (2, 2) and dc5.backbone.res5[0].conv2.stride == (1, 1)
    assert dc5.proposal_generator.in_features == ["res5"] and dc5.roi_heads.in_features == ["res5"]
    dconv = _model("mask_rcnn_R_50_FPN_dconv").backbone.bottom_up
    assert [type(dconv.res2[0]).__name__, type(dconv.res3[0]).__name__, type(dconv.res5[2]).__name__] == [
        "BottleneckBlock",
        "DeformBottleneckBlock",
        "DeformBottleneckBlock",
    ]
    assert not dconv.res3[0].deform_modulated
