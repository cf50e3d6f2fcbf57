"""detectron2 parity of the RegNetY-4GF / RegNetX-4GF Mask R-CNNs built from our LazyConfig files
new_baselines/mask_rcnn_regnet{y,x}_4gf_dds_FPN_100ep_LSJ.py: state-dict keys/shapes against the manifests, RPN
proposals and eval outputs on the stored input against detectron2's (tolerances of ../shared/compat/README.md); the
1x configs' RegNets against the same manifests."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

ARCHS = ["mask_rcnn_regnety_4gf_dds_FPN", "mask_rcnn_regnetx_4gf_dds_FPN"]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    """Our model from the LazyConfig file the manifest names (``model_zoo.get_config(name).model`` ->
    ``instantiate``), with the test score threshold the reference was computed with."""
    from detlightning import model_zoo
    from detlightning.config import instantiate

    m = P.manifest(arch)
    assert m["input_format"] == "BGR" and m["test_size"] == [800, 1333]
    cfg = model_zoo.get_config(m["detectron2_config"])
    cfg.model.roi_heads.box_predictor.test_score_thresh = m["roi_score_thresh_test"]
    return instantiate(cfg.model).eval()


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


@functools.lru_cache(maxsize=None)
def _outputs(arch: str) -> dict:
    """One eval forward on the stored input: the instances, plus the RPN's proposals and the padded input size
    captured on the way (the backbone is the slow part on a CPU, so it runs once)."""
    model = _loaded_model(arch)
    seen = {}

    def keep_proposals(module, args, output):
        seen["padded_image_size"] = list(args[0].tensor.shape[-2:])
        seen["proposals"] = output[0][0]

    handle = model.proposal_generator.register_forward_hook(keep_proposals)
    try:
        with torch.no_grad():
            seen["instances"] = model([P.reference_input()])[0]["instances"]
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_proposals_match_detectron2(arch: str) -> None:
    ours = _outputs(arch)
    ref = P.reference_output(arch)
    assert ours["padded_image_size"] == list(ref["padded_image_size"])
    match = P.greedy_match(ref["proposals"]["proposal_boxes"], ours["proposals"].proposal_boxes.tensor)
    assert match.fraction >= P.TOL["proposal_fraction"], f"{match.fraction:.3f} of the proposals matched"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs_match_detectron2(arch: str) -> None:
    inp = P.reference_input()
    out = _outputs(arch)["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(arch)["instances"]
    assert len(ref["pred_boxes"]) > 0
    P.assert_parity(P.compare_instances(ref, out))


def test_regnet_backbones_are_what_the_configs_say() -> None:
    y = _model("mask_rcnn_regnety_4gf_dds_FPN").backbone.bottom_up
    x = _model("mask_rcnn_regnetx_4gf_dds_FPN").backbone.bottom_up
    assert [len(list(s.children())) for s, _ in y.stages_and_names] == [2, 6, 12, 2]
    assert [len(list(s.children())) for s, _ in x.stages_and_names] == [2, 5, 14, 2]
    assert {k: v.channels for k, v in y.output_shape().items()} == {"s1": 128, "s2": 192, "s3": 512, "s4": 1088}
    assert {k: v.channels for k, v in x.output_shape().items()} == {"s1": 80, "s2": 240, "s3": 560, "s4": 1360}
    assert all(s.stride == 4 * 2**i for i, s in enumerate(y.output_shape().values()))
    assert y.s1.b1.f.se is not None and x.s1.b1.f.se is None


@pytest.mark.parametrize("arch", ARCHS)
def test_1x_config_has_the_same_regnet_frozen(arch: str) -> None:
    """COCO-InstanceSegmentation/mask_rcnn_regnet{x,y}_4gf_dds_fpn_1x.py: the same RegNet, frozen BN, stem and s1
    frozen, so that pycls ImageNet weights load into it."""
    from detlightning import model_zoo
    from detlightning.config import instantiate
    from detlightning.layers import FrozenBatchNorm2d

    name = "COCO-InstanceSegmentation/mask_rcnn_regnet{}_4gf_dds_fpn_1x.py".format(arch[len("mask_rcnn_regnet")])
    bottom_up = instantiate(model_zoo.get_config(name).model.backbone.bottom_up)
    ref = P.manifest(arch)["shapes"]
    prefix = "backbone.bottom_up."
    ref = {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix) and "num_batches_tracked" not in k}
    assert {k: list(v.shape) for k, v in bottom_up.state_dict().items()} == ref
    assert all(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.modules() if "BatchNorm" in type(m).__name__)
    assert not any(p.requires_grad for p in [*bottom_up.stem.parameters(), *bottom_up.s1.parameters()])
    assert all(p.requires_grad for p in bottom_up.s2.parameters())
