"""RetinaNet: head, anchor labelling, losses (against torchvision's focal loss), inference filtering and a short
training run on a tiny model (ResNet-18 FPN, 32 channels, 64x64 images)."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlightning.config import compose
from detlightning.layers import CycleBatchNormList
from detlightning.modeling import build_model
from detlightning.modeling.meta_arch import RetinaNet, RetinaNetHead
from detlightning.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detlightning.structures import Boxes, Instances
from detlightning.utils.events import EventStorage

TINY = [
    "model=retinanet",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.retinanet.num_classes=3",
    "model.retinanet.num_convs=2",
]


def _model(*extra: str) -> RetinaNet:
    torch.manual_seed(0)
    return build_model(compose([*TINY, *extra]))


@pytest.fixture(scope="module")
def model() -> RetinaNet:
    return _model()


def _image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _gt(h: int = 64, w: int = 64) -> Instances:
    return Instances((h, w), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]])),
                     gt_classes=torch.tensor([0, 2]))


def test_build_from_config(model: RetinaNet):
    assert isinstance(model, RetinaNet)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    sd = model.state_dict()
    # 9 anchors x 3 classes, 9 x 4 deltas; towers: conv, relu, conv, relu
    assert sd["head.cls_score.weight"].shape == (27, 32, 3, 3)
    assert sd["head.bbox_pred.weight"].shape == (36, 32, 3, 3)
    assert {"head.cls_subnet.0.weight", "head.cls_subnet.2.weight", "head.bbox_subnet.2.bias"} <= set(sd)
    assert "backbone.top_block.p6.weight" in sd and "backbone.top_block.p7.weight" in sd
    # the prior: every anchor starts at foreground probability 0.01
    torch.testing.assert_close(torch.sigmoid(model.head.cls_score.bias), torch.full((27,), 0.01))
    assert model.smooth_l1_beta == 0.0 and model.anchor_matcher.thresholds[1:-1] == [0.4, 0.5]
    assert [len(a) for a in model.anchor_generator.cell_anchors] == [9] * 5


def test_permute_to_n_hwa_k_orders_location_then_anchor():
    N, A, K, H, W = 2, 3, 4, 2, 5
    x = torch.arange(N * A * K * H * W, dtype=torch.float32).reshape(N, A * K, H, W)
    out = permute_to_N_HWA_K(x, K)
    assert out.shape == (N, H * W * A, K)
    for n, h, w, a, k in [(0, 0, 0, 0, 0), (1, 1, 3, 2, 1), (0, 1, 4, 1, 3)]:
        assert out[n, (h * W + w) * A + a, k] == x[n, a * K + k, h, w]


def test_label_anchors_matches_by_iou_with_low_quality_matches(model: RetinaNet):
    anchors = [Boxes(torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # == gt0 -> class 1
        [0.0, 0.0, 10.0, 22.0],    # IoU 100/220 = 0.45 with gt0 -> ignored
        [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> background
        [20.0, 20.0, 40.0, 40.0],  # IoU 400/850 = 0.47 with gt1: gt1's best anchor -> class 2 (low-quality)
    ]))]
    gt = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [25.0, 25.0, 50.0, 50.0]])),
                   gt_classes=torch.tensor([1, 2]))
    labels, boxes = model.label_anchors(anchors, [gt])
    assert labels[0].tolist() == [1, -1, 3, 2]
    torch.testing.assert_close(boxes[0][[0, 3]], gt.gt_boxes.tensor)
    # an image without annotations: everything is background
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    labels, boxes = model.label_anchors(anchors, [empty])
    assert labels[0].tolist() == [3, 3, 3, 3] and boxes[0].shape == (4, 4)


def test_losses_match_torchvision_focal_loss_and_l1(model: RetinaNet):
    torch.manual_seed(1)
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])), Boxes(torch.tensor([[0.0, 0, 30, 30]]))]
    logits = [torch.randn(2, 2, 3), torch.randn(2, 1, 3)]
    deltas = [torch.randn(2, 2, 4), torch.randn(2, 1, 4)]
    gt_labels = [torch.tensor([0, 3, -1]), torch.tensor([3, 2, 1])]
    gt_boxes = [torch.tensor([[1.0, 1, 11, 12], [0, 0, 1, 1], [0, 0, 1, 1]]),
                torch.tensor([[0.0, 0, 1, 1], [4, 6, 22, 18], [2, 0, 28, 33]])]
    model.loss_normalizer = 100.0
    with EventStorage():
        losses = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
    normalizer = 0.9 * 100 + 0.1 * 3  # 3 foreground anchors
    all_logits = torch.cat([torch.cat(logits, 1)[0], torch.cat(logits, 1)[1]])
    labels = torch.cat(gt_labels)
    valid = labels >= 0
    target = torch.zeros(6, 3)
    for i, lab in enumerate(labels.tolist()):
        if 0 <= lab < 3:
            target[i, lab] = 1.0
    expected_cls = tv_sigmoid_focal_loss(all_logits[valid], target[valid], alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], expected_cls / normalizer)

    # L1 on encoded deltas (weights 1, beta 0) of the foreground anchors, written out by hand
    def encode(a, b):
        aw, ah = a[2] - a[0], a[3] - a[1]
        bw, bh = b[2] - b[0], b[3] - b[1]
        ax, ay, bx, by = a[0] + aw / 2, a[1] + ah / 2, b[0] + bw / 2, b[1] + bh / 2
        return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)])

    all_anchors = torch.cat([a.tensor for a in anchors])
    all_deltas = torch.cat(deltas, 1)
    expected_box = sum(
        (all_deltas[n, r] - encode(all_anchors[r], gt_boxes[n][r])).abs().sum() for n, r in [(0, 0), (1, 1), (1, 2)]
    )
    torch.testing.assert_close(losses["loss_box_reg"], expected_box / normalizer)
    assert model.loss_normalizer == pytest.approx(normalizer)


_ANCHORS = [
    torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [30, 30, 40, 40]]),
    torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60]]),
]


def test_inference_single_image_threshold_topk_nms_and_max_detections(model: RetinaNet):
    probs = [
        torch.tensor([[0.90, 0.01, 0.00], [0.80, 0.60, 0.00], [0.04, 0.30, 0.70]]),
        torch.tensor([[0.50, 0.00, 0.00], [0.00, 0.00, 0.20]]),
    ]
    deltas = [torch.zeros(3, 4), torch.zeros(2, 4)]  # zero deltas: boxes are the anchors
    anchors = [Boxes(a) for a in _ANCHORS]
    old = (model.test_topk_candidates, model.max_detections_per_image)
    try:
        model.test_topk_candidates, model.max_detections_per_image = 100, 100
        out = model.inference_single_image(anchors, probs, deltas, (64, 64))
        # > 0.05: (a0,c0) .9, (a1,c0) .8 [suppressed by a0, same class, IoU 0.91], (a1,c1) .6, (a2,c1) .3,
        # (a2,c2) .7, level 2: (a0,c0) .5 [IoU 0.25 with a0: kept], (a1,c2) .2
        assert out.scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5, 0.3, 0.2])
        assert out.pred_classes.tolist() == [0, 2, 1, 0, 1, 2]
        torch.testing.assert_close(out.pred_boxes.tensor[0], _ANCHORS[0][0])
        torch.testing.assert_close(out.pred_boxes.tensor[3], _ANCHORS[1][0])
        # top-k per level: 2 candidates on level 1 (.9 .8), 2 on level 2
        model.test_topk_candidates = 2
        out = model.inference_single_image(anchors, probs, deltas, (64, 64))
        assert out.scores.tolist() == pytest.approx([0.9, 0.5, 0.2])
        model.test_topk_candidates, model.max_detections_per_image = 100, 2
        out = model.inference_single_image(anchors, probs, deltas, (64, 64))
        assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    finally:
        model.test_topk_candidates, model.max_detections_per_image = old


def test_eval_forward_output_format(model: RetinaNet):
    model.eval()
    model.test_score_thresh = 0.0  # random weights: keep candidates so the output is not empty
    try:
        with torch.no_grad():
            out = model([{"image": _image(), "height": 128, "width": 96}, {"image": _image(48, 56, seed=1)}])
    finally:
        model.test_score_thresh = 0.05
    assert [set(o) for o in out] == [{"instances"}, {"instances"}]
    for o, size in zip(out, [(128, 96), (48, 56)]):
        inst = o["instances"]
        assert inst.image_size == size
        assert 0 < len(inst) <= 100
        assert inst.pred_classes.dtype == torch.int64 and inst.pred_classes.max() < 3
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_training_losses_fall(loss_type: str):
    model = _model(f"model.retinanet.bbox_reg_loss_type={loss_type}")
    model.train()
    # The randomly initialised ResNet (identity FrozenBN) gives large, noisy features: train FPN + head only, with
    # clipped gradients, so a few steps decrease the loss monotonically.
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.bottom_up")]
    opt = torch.optim.SGD(params, lr=0.01)
    batch = [{"image": _image(), "instances": _gt()}, {"image": _image(seed=3), "instances": _gt()}]
    history = []
    with EventStorage() as storage:
        for _ in range(6):
            # a fixed normaliser, so the losses of different steps are comparable (the EMA would drift from 100)
            model.loss_normalizer = 100.0
            losses = model(batch)
            assert set(losses) == {"loss_cls", "loss_box_reg"}
            history.append({k: float(v.detach()) for k, v in losses.items()})
            opt.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        assert storage.latest()["num_pos_anchors"][0] > 0
    for key in ("loss_cls", "loss_box_reg"):
        assert history[-1][key] < history[0][key], history
    total = [sum(h.values()) for h in history]
    assert total[-1] < 0.85 * total[0], total


def test_training_without_instances_raises(model: RetinaNet):
    model.train()
    with EventStorage(), pytest.raises(KeyError, match="instances"):
        model([{"image": _image()}])
    model.eval()


@pytest.mark.parametrize("norm", ["GN", "BN", "SyncBN"])
def test_head_norm_variants(norm: str):
    from detlightning.layers import ShapeSpec

    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16)]
    head = RetinaNetHead(input_shape=shapes, num_classes=3, num_anchors=2, conv_dims=[32, 32], norm=norm)
    sd = head.state_dict()
    if norm == "GN":
        assert isinstance(head.cls_subnet[1], torch.nn.GroupNorm) and "cls_subnet.1.weight" in sd
    else:
        # one BN per level, shared affine (detectron2's CycleBatchNormList keys)
        assert isinstance(head.cls_subnet[1], CycleBatchNormList)
        assert {"cls_subnet.1.weight", "cls_subnet.1.0.running_mean", "cls_subnet.1.1.running_var"} <= set(sd)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4) * 5 + 3]
    head.train()
    logits, deltas = head(feats)
    assert [x.shape for x in logits] == [(2, 6, 8, 8), (2, 6, 4, 4)]
    assert [x.shape for x in deltas] == [(2, 8, 8, 8), (2, 8, 4, 4)]
    if norm != "GN":
        # each level updated its own statistics
        bn = head.cls_subnet[1]
        assert not torch.allclose(bn[0].running_mean, bn[1].running_mean)
