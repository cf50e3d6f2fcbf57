"""PanopticFPN: the combination step on hand-made inputs, loss weighting, eval outputs and a short training run
on a tiny model (ResNet-18 FPN, 32 channels, 64x64 images)."""
from __future__ import annotations

import pytest
import torch

from detlightning.config import compose
from detlightning.modeling import build_model
from detlightning.modeling.meta_arch import PanopticFPN, combine_semantic_and_instance_outputs
from detlightning.structures import BitMasks, Boxes, Instances
from detlightning.utils.events import EventStorage

TINY = [
    "model=panoptic_fpn",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=32",
    "model.rpn.batch_size_per_image=64",
    "model.roi_box_head.fc_dim=64",
    "model.roi_mask_head.conv_dim=32",
    "model.sem_seg_head.convs_dim=32",
    "model.sem_seg_head.num_classes=4",
]


def _model(*extra: str) -> PanopticFPN:
    torch.manual_seed(0)
    return build_model(compose([*TINY, *extra]))


def _image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _sample(seed: int = 0) -> dict:
    boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:36, 8:40] = True
    masks[1, 20:62, 30:60] = True
    inst = Instances((64, 64), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))
    sem = torch.full((64, 64), 2, dtype=torch.long)
    sem[:20] = 1
    sem[masks.any(0)] = 0  # "things"
    return {"image": _image(seed=seed), "instances": inst, "sem_seg": sem}


# ------------------------------------------------------------------------------------------------ combine
def _mask(rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[rows, cols] = True
    return m


def test_combine_semantic_and_instance_outputs_by_hand():
    semantic = torch.zeros(8, 8, dtype=torch.long)
    semantic[:4] = 1
    semantic[4:, 4:] = 2
    # instance order: C, A, E, D, B (the function sorts by score)
    masks = torch.stack([
        _mask(slice(4, 8), slice(3, 6)),   # C .7: 12 px, all taken by A and B -> dropped (overlap 1.0 > .5)
        _mask(slice(4, 8), slice(0, 4)),   # A .9: 16 px -> segment 1
        torch.zeros(8, 8, dtype=torch.bool),  # E .95: empty -> skipped
        _mask(slice(0, 2), slice(0, 2)),   # D .4: below the score threshold -> stop
        _mask(slice(4, 8), slice(2, 6)),   # B .8: 16 px, 8 taken by A (ratio .5, not > .5) -> its free 8 px
    ])
    inst = Instances((8, 8), scores=torch.tensor([0.7, 0.9, 0.95, 0.4, 0.8]),
                     pred_classes=torch.tensor([7, 5, 9, 8, 6]), pred_masks=masks)
    pan, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 10, 0.5)
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[4:, :4] = 1
    expected[4:, 4:6] = 2
    expected[:4] = 3  # stuff class 1: 32 free px >= 10; class 2 has 8 free px < 10 -> void
    assert pan.dtype == torch.int32
    assert torch.equal(pan, expected)
    assert info == [
        {"id": 1, "isthing": True, "score": pytest.approx(0.9), "category_id": 5, "instance_id": 1},
        {"id": 2, "isthing": True, "score": pytest.approx(0.8), "category_id": 6, "instance_id": 4},
        {"id": 3, "isthing": False, "category_id": 1, "area": 32},
    ]


def test_combine_stuff_ids_follow_class_order_and_skip_class_zero():
    semantic = torch.tensor([[3, 3, 0, 0], [1, 1, 0, 0]])
    inst = Instances((2, 4), scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long),
                     pred_masks=torch.zeros(0, 2, 4, dtype=torch.bool))
    pan, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 0, 0.5)
    assert info == [{"id": 1, "isthing": False, "category_id": 1, "area": 2},
                    {"id": 2, "isthing": False, "category_id": 3, "area": 2}]
    assert pan.tolist() == [[2, 2, 0, 0], [1, 1, 0, 0]]


# ------------------------------------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def model() -> PanopticFPN:
    return _model()


def test_eval_outputs(model: PanopticFPN):
    model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    model.combine_instances_score_thresh = 0.0
    try:
        with torch.no_grad():
            out = model([{"image": _image(), "height": 96, "width": 80}])[0]
    finally:
        model.roi_heads.box_predictor.test_score_thresh = 0.05
        model.combine_instances_score_thresh = 0.5
    assert set(out) == {"sem_seg", "instances", "panoptic_seg"}
    assert out["sem_seg"].shape == (4, 96, 80)
    inst = out["instances"]
    assert inst.image_size == (96, 80) and len(inst) > 0 and inst.pred_masks.shape[-2:] == (96, 80)
    pan, info = out["panoptic_seg"]
    assert pan.shape == (96, 80)
    assert set(torch.unique(pan).tolist()) - {0} == {s["id"] for s in info}
    # the combination is that of the returned instances and sem_seg argmax
    pan2, info2 = combine_semantic_and_instance_outputs(inst, out["sem_seg"].argmax(0), 0.5, 4096, 0.0)
    assert torch.equal(pan, pan2) and info == info2


def test_inference_without_postprocess_returns_raw_outputs(model: PanopticFPN):
    model.eval()
    with torch.no_grad():
        instances, sem_seg = model.inference([{"image": _image(48, 64)}], do_postprocess=False)
    assert sem_seg.shape == (1, 4, 64, 64)  # padded to a multiple of 32
    assert instances[0].image_size == (48, 64)


def _losses(model: PanopticFPN, batch: list[dict], seed: int = 0) -> dict:
    torch.manual_seed(seed)  # same proposal sampling for both models
    with EventStorage():
        return model(batch)


def test_training_losses_and_their_weights():
    base = _model()
    weighted = _model("model.panoptic_fpn.instance_loss_weight=2.0", "model.sem_seg_head.loss_weight=1.0")
    weighted.load_state_dict(base.state_dict())
    base.train()
    weighted.train()
    batch = [_sample(0), _sample(1)]
    lb, lw = _losses(base, batch), _losses(weighted, batch)
    assert set(lb) == {"loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    # panoptic_fpn.yaml: semantic loss weight 0.5; instance_loss_weight scales the box-regression and mask
    # losses. d2-parity: not loss_cls (the box predictor's loss_weight dict from the config has only
    # "loss_box_reg") and not the RPN's.
    torch.testing.assert_close(lw["loss_sem_seg"], 2 * lb["loss_sem_seg"])
    for k in ("loss_box_reg", "loss_mask"):
        torch.testing.assert_close(lw[k], 2 * lb[k])
    for k in ("loss_cls", "loss_rpn_cls", "loss_rpn_loc"):
        torch.testing.assert_close(lw[k], lb[k])


def test_training_loss_falls():
    model = _model()
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.bottom_up")]
    opt = torch.optim.SGD(params, lr=0.01)
    batch = [_sample(0), _sample(1)]
    history = []
    for step in range(6):
        losses = _losses(model, batch, seed=step)
        total = sum(losses.values())
        history.append(float(total.detach()))
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    assert history[-1] < 0.9 * history[0], history


def test_training_needs_sem_seg(model: PanopticFPN):
    model.train()
    batch = [{k: v for k, v in _sample().items() if k != "sem_seg"}]
    with EventStorage(), pytest.raises(KeyError, match="sem_seg"):
        model(batch)
    model.eval()
