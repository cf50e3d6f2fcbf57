"""FCOS: head outputs, point-to-box assignment (hand-built case and a scalar transcription of the rules),
centerness targets, losses, eval output format and a short training run on a tiny model (ResNet-18 FPN, 64 channels,
64x64 images)."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlightning import modeling
from detlightning.layers import ShapeSpec
from detlightning.modeling import META_ARCH_REGISTRY
from detlightning.modeling.backbone import FPN, BasicStem, LastLevelP6P7, ResNet
from detlightning.modeling.meta_arch import FCOS, FCOSHead
from detlightning.structures import Boxes, Instances
from detlightning.utils.events import EventStorage

NUM_CLASSES = 3


def _tiny_fcos(**kwargs) -> FCOS:
    torch.manual_seed(0)
    bottom_up = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(depth=18, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
    )
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["res3", "res4", "res5"],
        out_channels=64,
        top_block=LastLevelP6P7(in_channels=64, out_channels=64, in_feature="p5"),
    )
    head = FCOSHead(
        input_shape=[ShapeSpec(channels=64)] * 5, num_classes=NUM_CLASSES, conv_dims=[64, 64], norm="GN"
    )
    return FCOS(
        backbone=backbone,
        head=head,
        num_classes=NUM_CLASSES,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
        **kwargs,
    )


@pytest.fixture(scope="module")
def model() -> FCOS:
    return _tiny_fcos()


def _image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _gt(boxes: list[list[float]], classes: list[int], size: tuple[int, int] = (64, 64)) -> Instances:
    return Instances(size, gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor(classes))


def _points(model: FCOS, sizes: list[int]) -> list[Boxes]:
    """The point boxes of square feature maps of the given sizes, one per level."""
    return model.anchor_generator([torch.zeros(1, 1, s, s) for s in sizes])


def test_structure_and_exports(model: FCOS):
    assert modeling.FCOS is FCOS
    assert "FCOS" not in META_ARCH_REGISTRY  # detectron2 does not register it either
    sd = model.state_dict()
    assert sd["head.cls_score.weight"].shape == (NUM_CLASSES, 64, 3, 3)  # one point per location
    assert sd["head.bbox_pred.weight"].shape == (4, 64, 3, 3)
    assert sd["head.ctrness.weight"].shape == (1, 64, 3, 3)
    # conv, GN, ReLU per tower layer
    assert {"head.cls_subnet.0.weight", "head.cls_subnet.1.weight", "head.bbox_subnet.4.bias"} <= set(sd)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.box2box_transform.normalize_by_size
    assert (model.test_score_thresh, model.test_nms_thresh, model.center_sampling_radius) == (0.2, 0.6, 1.5)
    torch.testing.assert_close(torch.sigmoid(model.head.cls_score.bias), torch.full((NUM_CLASSES,), 0.01))
    # points: squares of side = stride, centred at (i + 0.5) * stride
    points = _points(model, [2, 1, 1, 1, 1])
    torch.testing.assert_close(points[0].tensor[:2], torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8]]))
    torch.testing.assert_close(points[4].tensor, torch.tensor([[0.0, 0, 128, 128]]))


def test_head_output_shapes(model: FCOS):
    feats = [torch.randn(2, 64, s, s) for s in (8, 4, 2, 1, 1)]
    logits, deltas, ctrness = model.head(feats)
    assert [t.shape for t in logits] == [(2, NUM_CLASSES, s, s) for s in (8, 4, 2, 1, 1)]
    assert [t.shape for t in deltas] == [(2, 4, s, s) for s in (8, 4, 2, 1, 1)]
    assert [t.shape for t in ctrness] == [(2, 1, s, s) for s in (8, 4, 2, 1, 1)]
    with pytest.raises(ValueError, match="levels"):
        model.head(feats[:3])


def test_label_anchors_hand_built_case(model: FCOS):
    """A = [0, 0, 30, 30] (class 1) and B = [0, 0, 40, 40] (class 2) on a 64x64 image.

    Stride-8 point centres are 4, 12, 20, ...; centre sampling (1.5 * 8 = 12 px around the box centre) keeps
    x, y in {4, 12, 20} for A (centre 15) and {12, 20, 28} for B (centre 20). Both fit level 0's range (max edge
    distance < 64) and no coarser level's. Where both are eligible, the smaller box A wins.
    """
    sizes = [8, 4, 2, 1, 1]
    points = _points(model, sizes)
    labels, boxes = model.label_anchors(points, [_gt([[0.0, 0, 30, 30], [0, 0, 40, 40]], [1, 2])])
    labels, boxes = labels[0], boxes[0]
    assert labels.shape == (sum(s * s for s in sizes),)
    grid = labels[:64].reshape(8, 8)  # level 0, (y, x)
    expected = torch.full((8, 8), NUM_CLASSES)
    expected[:3, :3] = 1  # A
    expected[1:4, 3] = 2  # B: x = 28
    expected[3, 1:4] = 2  # B: y = 28
    assert torch.equal(grid, expected), grid
    assert (labels[64:] == NUM_CLASSES).all()
    fg = labels != NUM_CLASSES
    assert fg.sum() == 9 + 5
    torch.testing.assert_close(boxes[labels == 1], torch.tensor([[0.0, 0, 30, 30]]).expand(9, 4))
    torch.testing.assert_close(boxes[labels == 2], torch.tensor([[0.0, 0, 40, 40]]).expand(5, 4))

    # centerness of point (12, 12) for A: l = t = 12, r = b = 18 -> sqrt((12/18)^2) = 2/3
    ctr = model.compute_ctrness_targets(points, [boxes])
    assert ctr[0, 1 * 8 + 1].item() == pytest.approx(2 / 3)
    # the central point of B's share at (28, 28): l = t = 28, r = b = 12 -> 12/28
    assert ctr[0, 3 * 8 + 3].item() == pytest.approx(12 / 28)

    # an image without annotations: everything is background
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    labels, boxes = model.label_anchors(points, [empty])
    assert (labels[0] == NUM_CLASSES).all() and boxes[0].shape == (len(labels[0]), 4)


def _reference_assignment(points: list[Boxes], gt: Instances, radius: float) -> list[int]:
    """The FCOS rules written out point by point: index of the assigned gt box or -1."""
    out = []
    num_levels = len(points)
    areas = gt.gt_boxes.area().tolist()
    for level, level_points in enumerate(points):
        for x0, y0, x1, _ in level_points.tensor.tolist():
            s = x1 - x0
            cx, cy = x0 + s / 2, y0 + s / 2
            low = 0.0 if level == 0 else 4 * s
            high = math.inf if level == num_levels - 1 else 8 * s
            best, best_area = -1, math.inf
            for j, (bx0, by0, bx1, by1) in enumerate(gt.gt_boxes.tensor.tolist()):
                dist = [cx - bx0, cy - by0, bx1 - cx, by1 - cy]
                near_centre = max(abs(cx - (bx0 + bx1) / 2), abs(cy - (by0 + by1) / 2)) < radius * s
                if near_centre and min(dist) > 0 and low < max(dist) < high and areas[j] < best_area:
                    best, best_area = j, areas[j]
            out.append(best)
    return out


def test_label_anchors_matches_the_rules_on_many_boxes(model: FCOS):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=g) * 400
    wh = torch.rand(12, 2, generator=g) * 500 + 4
    gt = _gt(torch.cat([xy, xy + wh], 1).tolist(), torch.randint(0, NUM_CLASSES, (12,), generator=g).tolist())
    points = _points(model, [64, 32, 16, 8, 4])  # a 512x512 image
    labels, boxes = model.label_anchors(points, [gt])
    assigned = torch.tensor(_reference_assignment(points, gt, model.center_sampling_radius))
    fg = assigned >= 0
    assert fg.sum() > 20 and len(set(torch.cat([a.tensor for a in points])[fg][:, 2].sub(
        torch.cat([a.tensor for a in points])[fg][:, 0]).tolist())) >= 3, "the case should exercise several levels"
    expected_labels = torch.where(fg, gt.gt_classes[assigned.clamp(min=0)], torch.tensor(NUM_CLASSES))
    assert torch.equal(labels[0], expected_labels)
    torch.testing.assert_close(boxes[0][fg], gt.gt_boxes.tensor[assigned[fg]])


def test_losses_match_torchvision(model: FCOS):
    torch.manual_seed(1)
    points = [Boxes(torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8]])), Boxes(torch.tensor([[0.0, 0, 16, 16]]))]
    logits = [torch.randn(2, 2, NUM_CLASSES), torch.randn(2, 1, NUM_CLASSES)]
    deltas = [torch.rand(2, 2, 4), torch.rand(2, 1, 4)]
    ctrness = [torch.randn(2, 2, 1), torch.randn(2, 1, 1)]
    bg = NUM_CLASSES
    gt_labels = [torch.tensor([0, bg, 2]), torch.tensor([bg, 1, bg])]
    gt_boxes = [
        torch.tensor([[1.0, 2, 9, 7], [0, 0, 0, 0], [2, 3, 13, 15]]),
        torch.tensor([[0.0, 0, 0, 0], [9, 1, 15, 6], [0, 0, 0, 0]]),
    ]
    model.loss_normalizer = 300.0
    with EventStorage() as storage:
        losses = model.losses(points, logits, gt_labels, deltas, gt_boxes, ctrness)
        assert storage.latest()["num_pos_anchors"][0] == pytest.approx(1.5)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    normalizer = 0.9 * 300 + 0.1 * 3
    assert model.loss_normalizer == pytest.approx(normalizer)

    labels = torch.cat(gt_labels)
    target = torch.zeros(6, NUM_CLASSES)
    for i, lab in enumerate(labels.tolist()):
        if lab < NUM_CLASSES:
            target[i, lab] = 1.0
    all_logits = torch.cat(logits, 1).reshape(6, NUM_CLASSES)
    expected_cls = tv_sigmoid_focal_loss(all_logits, target, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(losses["loss_fcos_cls"], expected_cls / normalizer)

    # boxes from (l, t, r, b) distances in stride units around each point centre
    all_points = torch.cat([p.tensor for p in points])
    all_deltas = torch.cat(deltas, 1)
    fg = [(0, 0), (0, 2), (1, 1)]
    pred, tgt, ctr_t, ctr_p = [], [], [], []
    for n, r in fg:
        x0, y0, x1, y1 = all_points[r].tolist()
        s, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
        left, top, right, bottom = (all_deltas[n, r] * s).tolist()
        pred.append([cx - left, cy - top, cx + right, cy + bottom])
        bx0, by0, bx1, by1 = gt_boxes[n][r].tolist()
        dl, dt, dr, db = cx - bx0, cy - by0, bx1 - cx, by1 - cy
        ctr_t.append(math.sqrt(min(dl, dr) / max(dl, dr) * min(dt, db) / max(dt, db)))
        ctr_p.append(torch.cat(ctrness, 1)[n, r, 0])
        tgt.append(gt_boxes[n][r].tolist())
    expected_loc = generalized_box_iou_loss(torch.tensor(pred), torch.tensor(tgt), reduction="sum")
    torch.testing.assert_close(losses["loss_fcos_loc"], expected_loc / normalizer, rtol=1e-5, atol=1e-6)
    expected_ctr = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.stack(ctr_p), torch.tensor(ctr_t), reduction="sum"
    )
    torch.testing.assert_close(losses["loss_fcos_ctr"], expected_ctr / normalizer)


def test_inference_scores_are_geometric_mean_of_class_and_centerness(model: FCOS):
    points = _points(model, [2, 1, 1, 1, 1])
    n = sum(len(p) for p in points)
    logits = torch.full((1, n, NUM_CLASSES), -10.0)
    ctr = torch.zeros(1, n, 1)
    logits[0, 1, 2] = 2.0  # level 0, point (x=1, y=0), class 2
    ctr[0, 1, 0] = -1.0
    deltas = torch.full((1, n, 4), 0.5)  # a box of one stride around the point centre
    sizes = [len(p) for p in points]

    def to_maps(t: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for chunk, s in zip(t.split(sizes, dim=1), [2, 1, 1, 1, 1]):
            out.append(chunk.reshape(1, s, s, -1).permute(0, 3, 1, 2))
        return out

    features = [torch.zeros(1, 1, s, s) for s in [2, 1, 1, 1, 1]]
    images = type("Images", (), {"image_sizes": [(16, 16)]})()
    out = model.forward_inference(images, features, [to_maps(logits), to_maps(deltas), to_maps(ctr)])[0]
    assert len(out) == 1
    sigmoid = torch.sigmoid(torch.tensor([2.0, -1.0]))
    assert out.scores.item() == pytest.approx(math.sqrt(sigmoid[0] * sigmoid[1]))
    assert out.pred_classes.tolist() == [2]
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[8.0, 0, 16, 8]]))


def test_eval_forward_output_format():
    model = _tiny_fcos(test_score_thresh=0.0, max_detections_per_image=50).eval()
    with torch.no_grad():
        out = model([{"image": _image(), "height": 128, "width": 96}, {"image": _image(48, 56, seed=1)}])
    assert [set(o) for o in out] == [{"instances"}, {"instances"}]
    for o, size in zip(out, [(128, 96), (48, 56)]):
        inst = o["instances"]
        assert inst.image_size == size
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= 50
        assert inst.pred_classes.dtype == torch.int64 and inst.pred_classes.max() < NUM_CLASSES
        assert torch.all(inst.scores[:-1] >= inst.scores[1:]) and torch.all((inst.scores > 0) & (inst.scores < 1))
    # the default threshold of 0.2 is above sqrt(0.01 * 0.5), the initial score of every point
    model.test_score_thresh = 0.2
    with torch.no_grad():
        assert len(model([{"image": _image()}])[0]["instances"]) == 0


def test_training_steps_give_finite_falling_losses():
    model = _tiny_fcos().train()
    # the randomly initialised ResNet gives large, noisy features: train FPN + head only, with clipped gradients
    model.backbone.bottom_up.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    gt = _gt([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]], [0, 2])
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    batch = [{"image": _image(), "instances": gt}, {"image": _image(seed=3), "instances": empty}]
    history = []
    with EventStorage() as storage:
        for _ in range(4):
            model.loss_normalizer = 300.0  # fixed, so steps are comparable
            losses = model(batch)
            assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
            assert all(torch.isfinite(v) for v in losses.values())
            history.append(float(sum(losses.values()).detach()))
            opt.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        assert storage.latest()["num_pos_anchors"][0] > 0
    assert history[-1] < history[0], history
