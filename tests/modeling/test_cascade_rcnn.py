"""CascadeROIHeads on tiny models: per-stage structure and losses, proposal re-labelling, gradient scaling,
inference and the GN 4conv1fc box-head variant."""
from __future__ import annotations

import pytest
import torch

from detlightning.config import compose
from detlightning.modeling import build_model
from detlightning.modeling.roi_heads import CascadeROIHeads
from detlightning.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detlightning.structures import BitMasks, Boxes, Instances
from detlightning.utils.events import EventStorage

TINY = [
    "model=cascade_mask_rcnn",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=32",
    "model.rpn.batch_size_per_image=64",
    "model.roi_box_head.fc_dim=64",
    "model.roi_mask_head.conv_dim=32",
]
STAGE_KEYS = {f"{k}_stage{s}" for k in ("loss_cls", "loss_box_reg") for s in range(3)}


def _model(*extra: str):
    torch.manual_seed(0)
    return build_model(compose([*TINY, *extra]))


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _sample(seed: int = 0) -> dict:
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:36, 8:40] = True
    masks[1, 20:62, 30:60] = True
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[8.0, 8, 40, 36], [30, 20, 60, 62]])),
                     gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))
    return {"image": _image(seed), "instances": inst}


@pytest.fixture(scope="module")
def model():
    return _model()


def test_structure(model):
    heads = model.roi_heads
    assert isinstance(heads, CascadeROIHeads) and heads.num_cascade_stages == 3
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert heads.proposal_matcher is heads.proposal_matchers[0]
    assert [tuple(p.box2box_transform.weights) for p in heads.box_predictor] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    sd = model.state_dict()
    assert sd["roi_heads.box_predictor.2.bbox_pred.weight"].shape == (4, 64)  # class-agnostic
    assert "roi_heads.box_head.1.fc1.weight" in sd and "roi_heads.mask_head.predictor.weight" in sd


def test_cascade_needs_class_agnostic_regression():
    with pytest.raises(ValueError, match="cls_agnostic_bbox_reg"):
        _model("model.roi_box_head.cls_agnostic_bbox_reg=false")


def test_scale_gradient():
    x = torch.ones(3, requires_grad=True)
    (_ScaleGradient.apply(x, 0.25) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 0.5))


def test_match_and_label_boxes_uses_the_stage_iou(model):
    model.train()
    gt = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])), gt_classes=torch.tensor([1]))
    # IoUs with the gt: 1.0, 0.64, 0.5625 (9x... boxes), 0
    props = Instances((64, 64), proposal_boxes=Boxes(torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 8, 8], [0, 0, 10, 5.625], [30, 30, 40, 40]])))
    with EventStorage():
        out = model.roi_heads._match_and_label_boxes([props], 2, [gt])  # stage 2: IoU >= 0.7
    assert out[0].gt_classes.tolist() == [1, 3, 3, 3]
    with EventStorage():
        out = model.roi_heads._match_and_label_boxes([props], 1, [gt])  # stage 1: IoU >= 0.6
    assert out[0].gt_classes.tolist() == [1, 1, 3, 3]
    model.eval()


def _train(model, steps: int) -> list[dict]:
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.bottom_up")]
    opt = torch.optim.SGD(params, lr=0.01)
    history = []
    for step in range(steps):
        torch.manual_seed(step)
        with EventStorage() as storage:
            losses = model([_sample(0), _sample(1)])
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    assert "stage2/roi_head/num_fg_samples" in storage.latest()
    return history


def test_training_per_stage_losses_fall():
    history = _train(_model(), 6)
    assert set(history[0]) == STAGE_KEYS | {"loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    total = [sum(h.values()) for h in history]
    assert total[-1] < 0.9 * total[0], total


def test_eval_outputs(model):
    model.eval()
    for p in model.roi_heads.box_predictor:
        p.test_score_thresh = 0.0
    with torch.no_grad():
        out = model([{"image": _image(), "height": 32, "width": 32}])[0]["instances"]
    for p in model.roi_heads.box_predictor:
        p.test_score_thresh = 0.05
    assert out.image_size == (32, 32) and 0 < len(out) <= 100
    assert out.pred_masks.shape == (len(out), 32, 32) and out.pred_classes.max() < 3


def test_gn_4conv1fc_box_head_variant():
    m = _model("model.roi_box_head.num_conv=4", "model.roi_box_head.num_fc=1", "model.roi_box_head.norm=GN",
               "model.roi_box_head.conv_dim=32", "model.roi_mask_head.norm=GN", "model.fpn.norm=GN")
    sd = m.state_dict()
    assert "roi_heads.box_head.2.conv4.norm.weight" in sd and "roi_heads.box_head.2.fc1.weight" in sd
    assert "roi_heads.mask_head.mask_fcn1.norm.weight" in sd and "backbone.fpn_lateral2.norm.weight" in sd
    history = _train(m, 2)
    assert set(history[0]) >= STAGE_KEYS
