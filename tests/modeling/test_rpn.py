"""RPN head shapes and names, RPN inference, and RPN training losses against an independent computation."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.proposal_generator import (
    RPN,
    StandardRPNHead,
    build_proposal_generator,
    build_rpn_head,
)
from detlightning.structures import Boxes, ImageList, Instances
from detlightning.utils.events import EventStorage, EventStorageError


# -------------------------------------------------------------------------------------------------------- head
def test_standard_rpn_head_output_shapes():
    head = StandardRPNHead(in_channels=8, num_anchors=3, box_dim=4)
    feats = [torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)]
    logits, deltas = head(feats)
    assert [tuple(x.shape) for x in logits] == [(2, 3, 6, 5), (2, 3, 3, 3)]
    assert [tuple(x.shape) for x in deltas] == [(2, 12, 6, 5), (2, 12, 3, 3)]


def test_standard_rpn_head_parameter_names_match_detectron2():
    head = StandardRPNHead(in_channels=8, num_anchors=3)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "conv.weight": (8, 8, 3, 3),
        "conv.bias": (8,),
        "objectness_logits.weight": (3, 8, 1, 1),
        "objectness_logits.bias": (3,),
        "anchor_deltas.weight": (12, 8, 1, 1),
        "anchor_deltas.bias": (12,),
    }
    # several hidden convs become conv.conv0, conv.conv1, ... ; -1 keeps the channel count
    deep = StandardRPNHead(in_channels=8, num_anchors=1, conv_dims=[16, -1])
    names = {k: tuple(v.shape) for k, v in deep.state_dict().items() if k.startswith("conv.")}
    assert names == {
        "conv.conv0.weight": (16, 8, 3, 3), "conv.conv0.bias": (16,),
        "conv.conv1.weight": (16, 16, 3, 3), "conv.conv1.bias": (16,),
    }
    with pytest.raises(ValueError, match="> 0"):
        StandardRPNHead(in_channels=8, num_anchors=1, conv_dims=[0])


def test_standard_rpn_head_applies_relu_after_the_hidden_conv():
    head = StandardRPNHead(in_channels=2, num_anchors=1)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.copy_(torch.tensor([-1.0, 2.0]))
        head.objectness_logits.weight.fill_(1.0)
        head.objectness_logits.bias.zero_()
    logits, _ = head([torch.randn(1, 2, 3, 3)])
    # hidden = relu([-1, 2]) = [0, 2] everywhere -> logit 2
    torch.testing.assert_close(logits[0], torch.full((1, 1, 3, 3), 2.0))


def test_from_config_builds_detectron2_names():
    cfg = compose(["model=faster_rcnn", "backbone=resnet50"])
    shapes = {f"p{i}": ShapeSpec(channels=16, stride=2**i) for i in range(2, 7)}
    rpn = build_proposal_generator(cfg, shapes)
    assert isinstance(rpn, RPN)
    keys = sorted(rpn.state_dict())
    assert keys == sorted(f"rpn_head.{m}.{p}" for m in ("conv", "objectness_logits", "anchor_deltas")
                          for p in ("weight", "bias"))
    assert rpn.rpn_head.anchor_deltas.weight.shape == (12, 16, 1, 1)  # 3 aspect ratios x 4
    assert rpn.pre_nms_topk == {True: 2000, False: 1000}
    assert isinstance(build_rpn_head(cfg, list(shapes.values())), StandardRPNHead)
    with pytest.raises(KeyError, match="does not output"):
        build_proposal_generator(cfg, {"p2": shapes["p2"]})
    # PrecomputedProposals: no proposal generator (Fast R-CNN)
    assert build_proposal_generator(compose(["model=fast_rcnn"]), shapes) is None


# --------------------------------------------------------------------------------------------- RPN inference
def _rpn(head: nn.Module | None = None, *, strides=(4, 8), sizes=((8,), (16,)), ratios=(0.5, 1.0, 2.0),
         batch_size_per_image: int = 256, loss_weight=1.0, box_reg_loss_type: str = "smooth_l1",
         post_nms_topk=(50, 20)) -> RPN:
    anchor_generator = DefaultAnchorGenerator(sizes=[list(s) for s in sizes], aspect_ratios=list(ratios),
                                              strides=list(strides), offset=0.0)
    in_features = [f"p{i}" for i in range(len(strides))]
    return RPN(
        in_features=in_features,
        head=head if head is not None else StandardRPNHead(in_channels=8, num_anchors=anchor_generator.num_anchors[0]),
        anchor_generator=anchor_generator,
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_topk=(100, 60),
        post_nms_topk=post_nms_topk,
        nms_thresh=0.7,
        loss_weight=loss_weight,
        box_reg_loss_type=box_reg_loss_type,
    )


def _features(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"p0": torch.randn(n, 8, 8, 8, generator=g), "p1": torch.randn(n, 8, 4, 4, generator=g)}


def _images(sizes: list[tuple[int, int]]) -> ImageList:
    return ImageList(torch.zeros(len(sizes), 3, 32, 32), sizes)


def test_rpn_inference_returns_sorted_clipped_proposals_up_to_post_nms_topk():
    torch.manual_seed(0)
    rpn = _rpn().eval()
    with torch.no_grad():
        for p in rpn.rpn_head.parameters():
            p.normal_(std=0.5)  # spread the scores and deltas
        proposals, losses = rpn(_images([(32, 32), (24, 30)]), _features())
    assert losses == {}
    assert len(proposals) == 2
    for res, (h, w) in zip(proposals, [(32, 32), (24, 30)]):
        assert res.image_size == (h, w)
        assert set(res.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert 0 < len(res) <= 20  # post_nms_topk test
        logits = res.objectness_logits
        assert torch.all(logits[:-1] >= logits[1:])
        b = res.proposal_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    rpn.train()  # train settings: post_nms_topk 50
    with EventStorage(), torch.no_grad():
        gt = [_gt((32, 32), [[2, 2, 20, 20]]), _gt((24, 30), [[4, 4, 16, 12]])]
        proposals, _ = rpn(_images([(32, 32), (24, 30)]), _features(), gt)
    assert max(len(p) for p in proposals) > 20 and all(len(p) <= 50 for p in proposals)


# ---------------------------------------------------------------------------------------------- RPN training
def _gt(size: tuple[int, int], boxes: list[list[float]]) -> Instances:
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return inst


def test_rpn_training_losses_are_finite_positive_and_logged():
    torch.manual_seed(0)
    rpn = _rpn().train()
    gt = [_gt((32, 32), [[2, 2, 20, 20]]), _gt((24, 30), [[4, 4, 16, 12], [10, 2, 28, 22]])]
    with EventStorage() as storage:
        proposals, losses = rpn(_images([(32, 32), (24, 30)]), _features(), gt)
        latest = {k: v[0] for k, v in storage.latest().items()}
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    for v in losses.values():
        assert torch.isfinite(v) and v.item() > 0
    assert latest["rpn/num_pos_anchors"] > 0 and latest["rpn/num_neg_anchors"] > 0
    sum(losses.values()).backward()
    assert rpn.rpn_head.conv.weight.grad is not None and rpn.rpn_head.conv.weight.grad.abs().sum() > 0


def test_rpn_training_requires_gt_and_event_storage():
    rpn = _rpn().train()
    with EventStorage(), pytest.raises(ValueError, match="gt_instances"):
        rpn(_images([(32, 32), (32, 32)]), _features())
    with pytest.raises(EventStorageError):
        rpn(_images([(32, 32), (32, 32)]), _features(), [_gt((32, 32), [[0, 0, 9, 9]])] * 2)
    with EventStorage(), pytest.raises(ValueError, match="gt_boxes"):
        rpn(_images([(32, 32), (32, 32)]), _features(), [Instances((32, 32))] * 2)
    with pytest.raises(KeyError, match="p1"):
        rpn.eval()(_images([(32, 32)]), {"p0": torch.zeros(1, 8, 8, 8)})


class _FixedHead(nn.Module):
    """A head returning given predictions: lets the test compute the expected losses independently."""

    def __init__(self, logits: torch.Tensor, deltas: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.deltas = nn.Parameter(deltas)

    def forward(self, features):
        return [self.logits], [self.deltas]


def _independent_losses(logits_hw: torch.Tensor, deltas_hw: torch.Tensor, gt: torch.Tensor, stride: int,
                        size: float, normalizer: float) -> tuple[float, float]:
    """Expected losses for 1 image, 1 level, 1 square anchor per location (offset 0), every labelled anchor used."""
    h, w = logits_hw.shape
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    cx, cy = xs.reshape(-1).double(), ys.reshape(-1).double()
    anchors = torch.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], dim=1)
    iou = box_iou(gt.double(), anchors)  # (M, R)
    best, idx = iou.max(dim=0)
    labels = torch.full_like(best, -1)
    labels[best < 0.3] = 0
    labels[best >= 0.7] = 1
    labels[(iou == iou.max(dim=1, keepdim=True).values).any(dim=0)] = 1  # best anchor(s) of every gt
    logits = logits_hw.reshape(-1).double()
    valid = labels >= 0
    y = labels[valid]
    p = torch.sigmoid(logits[valid])
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum()
    pos = labels == 1
    g = gt.double()[idx[pos]]
    a = anchors[pos]
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    target = torch.stack([
        ((g[:, 0] + gw / 2) - (a[:, 0] + aw / 2)) / aw,
        ((g[:, 1] + gh / 2) - (a[:, 1] + ah / 2)) / ah,
        torch.log(gw / aw),
        torch.log(gh / ah),
    ], dim=1)
    pred = deltas_hw.permute(1, 2, 0).reshape(-1, 4).double()[pos]
    l1 = (pred - target).abs().sum()
    return float(bce / normalizer), float(l1 / normalizer)


def test_rpn_losses_match_an_independent_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 1, 4, 4, generator=g)
    deltas = 0.1 * torch.randn(1, 4, 4, 4, generator=g)
    gt = torch.tensor([[2.0, 3.0, 17.0, 15.0], [14.0, 14.0, 30.0, 31.0]])
    # batch 1000 > #anchors: no random subsampling, every labelled anchor counts
    rpn = _rpn(_FixedHead(logits, deltas), strides=(8,), sizes=((16,),), ratios=(1.0,), batch_size_per_image=1000,
               loss_weight={"loss_rpn_cls": 1.0, "loss_rpn_loc": 2.0}).train()
    with EventStorage():
        _, losses = rpn(_images([(32, 32)]), {"p0": torch.zeros(1, 8, 4, 4)}, [_gt((32, 32), gt.tolist())])
    exp_cls, exp_loc = _independent_losses(logits[0, 0], deltas[0], gt, stride=8, size=16.0, normalizer=1000.0)
    assert exp_loc > 0
    assert losses["loss_rpn_cls"].item() == pytest.approx(exp_cls, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(2.0 * exp_loc, rel=1e-5)


def test_rpn_giou_loss_and_float_loss_weight():
    torch.manual_seed(0)
    rpn = _rpn(box_reg_loss_type="giou", loss_weight=0.5).train()
    assert rpn.loss_weight == {"loss_rpn_cls": 0.5, "loss_rpn_loc": 0.5}
    with EventStorage():
        _, losses = rpn(_images([(32, 32), (32, 32)]), _features(), [_gt((32, 32), [[2, 2, 20, 20]])] * 2)
    # untrained head: decoded boxes ~ anchors, so 1 - GIoU is in (0, 2)
    assert 0 < losses["loss_rpn_loc"].item() < 2 * 0.5
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        _rpn(box_reg_loss_type="l2")


def test_rpn_without_ground_truth_boxes_has_only_negatives():
    torch.manual_seed(0)
    rpn = _rpn().train()
    with EventStorage() as storage:
        _, losses = rpn(_images([(32, 32), (32, 32)]), _features(), [_gt((32, 32), [])] * 2)
        assert storage.latest()["rpn/num_pos_anchors"][0] == 0
    assert losses["loss_rpn_loc"].item() == 0.0
    assert losses["loss_rpn_cls"].item() > 0
