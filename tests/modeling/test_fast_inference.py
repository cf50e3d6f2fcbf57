"""The opt-in fast path: precision contexts, compile wiring, and the config keys that select them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.engine import DefaultPredictor
from detlightning.evaluation.compare import compare_instances
from detlightning.modeling import build_model, compile_for_inference, set_inference_precision
from detlightning.modeling.fast_inference import _dense_parts

TINY = [
    "model=mask_rcnn",
    "backbone=resnet50",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.score_thresh_test=0.0",  # random weights: keep the top detections whatever their score
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(compose(TINY)).eval()


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 10, generator=g)
    return (torch.nn.functional.interpolate(low, size=(96, 120), mode="bilinear")[0] * 255).to(torch.uint8)


def test_bf16_runs_the_dense_parts_only_and_hands_on_fp32(model):
    inputs = [{"image": _image()}]
    seen = {}
    hook = model.backbone.bottom_up.stem.register_forward_hook(lambda m, i, o: seen.update(stem=o.dtype))
    try:
        with torch.no_grad():
            reference = model(inputs)[0]["instances"]
            seen.clear()
            set_inference_precision(model, "bf16")
            fast = model(inputs)[0]["instances"]
            features = model.backbone(model.preprocess_image(inputs).tensor)
    finally:
        set_inference_precision(model, "fp32")
        hook.remove()
    assert seen["stem"] == torch.bfloat16  # the convolutions ran in bf16 ...
    assert all(f.dtype == torch.float32 for f in features.values())  # ... and the parts hand on fp32
    assert len(reference) > 0 and len(fast) == len(reference)
    for field in ("scores", "pred_masks"):
        assert fast.get(field).dtype == reference.get(field).dtype
    assert fast.pred_boxes.tensor.dtype == torch.float32
    figures = compare_instances(reference, fast, iou_threshold=0.5)
    # bf16 keeps ~3 significant digits; on this random tiny model most detections remain, and none moves by more
    # than a tenth of the image (the compat-weight figures are in the benchmark: scripts/benchmark.py fast)
    assert figures["match_fraction"] > 0.5 and figures["box"] < 12.0
    # fp32 again: the plain methods are back, outputs identical to before
    assert "forward" not in model.backbone.__dict__
    with torch.no_grad():
        again = model(inputs)[0]["instances"]
    assert torch.equal(again.pred_boxes.tensor, reference.pred_boxes.tensor)
    with pytest.raises(ValueError, match="test.precision must be one of"):
        set_inference_precision(model, "fp8")


def test_low_precision_follows_deepcopy_and_leaves_training_alone(model):
    import copy

    twin = copy.deepcopy(model)
    set_inference_precision(twin, "bf16")
    clone = copy.deepcopy(twin)
    assert clone.backbone.forward.module is clone.backbone  # not the original's backbone
    clone.train()
    x = torch.randn(1, 3, 64, 64)
    assert all(f.dtype == torch.float32 for f in clone.backbone(x).values())
    assert "forward" not in model.backbone.__dict__  # the original is untouched


def test_compile_for_inference_compiles_the_dense_parts_and_keeps_names(model):
    torch.manual_seed(0)
    fresh = build_model(compose(TINY)).eval()
    fresh.load_state_dict(model.state_dict())
    keys = list(fresh.state_dict())
    compile_for_inference(fresh, backend="eager")  # the wiring; inductor itself is torch's to test
    assert [path for path, _, _ in _dense_parts(fresh)] == [
        "backbone", "proposal_generator.rpn_head", "roi_heads.box_head", "roi_heads.mask_head"
    ]
    assert list(fresh.state_dict()) == keys  # checkpoints load unchanged (nn.Module.compile, no _orig_mod.)
    inputs = [{"image": _image(1)}]
    with torch.no_grad():
        a = model(inputs)[0]["instances"]
        b = fresh(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.pred_masks, b.pred_masks)
    with pytest.raises(ValueError, match="model.eval"):
        compile_for_inference(fresh.train())


def test_config_keys_reach_default_predictor():
    cfg = compose([*TINY, "test.precision=bf16"])
    assert cfg.test.precision == "bf16" and cfg.model.compile is False
    predictor = DefaultPredictor(cfg)
    assert predictor.precision == "bf16"
    out = predictor(np.ascontiguousarray(_image().permute(1, 2, 0).numpy()))
    assert len(out["instances"]) > 0
    with pytest.raises(ValueError, match="test.precision must be one of"):
        DefaultPredictor(compose([*TINY, "test.precision=fp8"]))
    with pytest.raises(Exception, match="model.compile"):
        compose([*TINY, "model.compile=maybe"])


def test_detectron2_cfgnode_spelling():
    from detlightning.config import get_cfg
    from detlightning.config.reader import cfg_get

    cfg = get_cfg()
    assert cfg_get(cfg, "test.precision", None) == "fp32" and cfg_get(cfg, "model.compile", None) is False
    cfg.TEST.PRECISION = "bf16"  # not detectron2 keys: a CfgNode user sets them by hand
    cfg.MODEL.COMPILE = True
    assert cfg_get(cfg, "test.precision", None) == "bf16" and cfg_get(cfg, "model.compile", None) is True
