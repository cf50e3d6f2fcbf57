"""ROI heads: proposal labelling/sampling, tiny Standard/Res5 heads end to end, and detectron2 parameter names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.roi_heads import (
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    select_foreground_proposals,
    select_proposals_with_visible_keypoints,
)
from detlightning.structures import BitMasks, Boxes, Instances, Keypoints
from detlightning.utils.events import EventStorage

IMAGE = 64


def _latest(storage: EventStorage) -> dict[str, float]:
    return {k: v[0] for k, v in storage.latest().items()}


# ---------------------------------------------------------------------------------------------- labelling/sampling


def _base_heads(append_gt: bool) -> ROIHeads:
    return ROIHeads(
        num_classes=3,
        batch_size_per_image=16,
        positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        proposal_append_gt=append_gt,
    )


def _target(boxes: list[list[float]], classes: list[int]) -> Instances:
    t = Instances((IMAGE, IMAGE))
    t.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    t.gt_classes = torch.tensor(classes, dtype=torch.long)
    return t


def _proposals(boxes: list[list[float]]) -> Instances:
    p = Instances((IMAGE, IMAGE))
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    p.objectness_logits = torch.zeros(len(boxes))
    return p


def test_label_and_sample_proposals_by_hand():
    gt = _target([[0, 0, 10, 10], [30, 30, 50, 50]], [2, 0])
    gt.gt_extra = torch.tensor([7, 8])  # any gt_* field travels with the match
    # IoUs with gt 0: 1.0, 0.5 (exactly the threshold: foreground), 0; the last matches gt 1 with IoU 0.25
    props = _proposals([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 25, 25], [30, 30, 40, 40]])
    with EventStorage() as storage:
        (out,) = _base_heads(append_gt=False).label_and_sample_proposals([props], [gt])
        stats = _latest(storage)
    assert len(out) == 4
    by_box = {
        tuple(b.tolist()): (int(c), int(e))
        for b, c, e in zip(out.proposal_boxes.tensor, out.gt_classes, out.gt_extra)
    }
    assert by_box[(0.0, 0.0, 10.0, 10.0)] == (2, 7)
    assert by_box[(0.0, 0.0, 10.0, 5.0)] == (2, 7)
    assert by_box[(20.0, 20.0, 25.0, 25.0)][0] == 3  # background = num_classes
    assert by_box[(30.0, 30.0, 40.0, 40.0)][0] == 3
    fg = out.gt_classes < 3
    assert torch.equal(out.gt_boxes.tensor[fg], torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]))
    assert out.gt_classes[:2].tolist() == [2, 2]  # foreground first
    assert stats["roi_head/num_fg_samples"] == 2 and stats["roi_head/num_bg_samples"] == 2


def test_label_and_sample_appends_gt_and_handles_empty_targets():
    gt = _target([[0, 0, 10, 10]], [1])
    props = _proposals([[40, 40, 50, 50]])
    empty_gt = _target([], [])
    with EventStorage() as storage:
        out, out_empty = _base_heads(append_gt=True).label_and_sample_proposals(
            [props, _proposals([[0, 0, 5, 5], [1, 1, 6, 6]])], [gt, empty_gt]
        )
        stats = _latest(storage)
    assert sorted(out.gt_classes.tolist()) == [1, 3]  # the appended gt box is the foreground sample
    assert out_empty.gt_classes.tolist() == [3, 3] and not out_empty.has("gt_boxes")
    assert stats["roi_head/num_fg_samples"] == 0.5 and stats["roi_head/num_bg_samples"] == 1.5


def test_sampling_respects_batch_size_and_positive_fraction():
    gt = _target([[0, 0, 32, 32]], [0])
    boxes = [[0, 0, 32, 32]] * 10 + [[40 + i, 40, 50 + i, 50] for i in range(20)]
    with EventStorage():
        (out,) = _base_heads(append_gt=False).label_and_sample_proposals([_proposals(boxes)], [gt])
    assert len(out) == 16
    assert int((out.gt_classes == 0).sum()) == 4  # 0.25 * 16 foreground at most
    assert int((out.gt_classes == 3).sum()) == 12


def test_select_foreground_and_visible_keypoints():
    p = _proposals([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15], [30, 30, 40, 40]])
    p.gt_classes = torch.tensor([0, 3, -1, 2])
    fg, masks = select_foreground_proposals([p], bg_label=3)
    assert masks[0].tolist() == [True, False, False, True]
    assert fg[0].proposal_boxes.tensor.tolist() == [[0, 0, 10, 10], [30, 30, 40, 40]]

    q = _proposals([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    q.gt_keypoints = Keypoints(
        torch.tensor(
            [
                [[5.0, 5.0, 2.0], [50.0, 50.0, 2.0]],  # one visible keypoint inside: kept
                [[25.0, 25.0, 0.0], [50.0, 50.0, 2.0]],  # inside but unlabelled, visible but outside: dropped
                [[10.0, 10.0, 1.0], [0.0, 0.0, 0.0]],  # on the box border, v = 1: kept
            ]
        )
    )
    with EventStorage() as storage:
        (kept,) = select_proposals_with_visible_keypoints([q])
        assert _latest(storage)["keypoint_head/num_fg_samples"] == 2
    assert kept.proposal_boxes.tensor.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10]]


# ------------------------------------------------------------------------------------------------ tiny StandardROIHeads


def _tiny_cfg(model: str, *extra: str):
    return compose(
        [
            f"model={model}",
            "backbone=resnet50",
            "model.roi_heads.num_classes=3",
            "model.roi_heads.in_features=[p2,p3]",
            "model.roi_heads.batch_size_per_image=16",
            "model.roi_heads.score_thresh_test=0.0",
            "model.roi_box_head.fc_dim=16",
            "model.roi_box_head.pooler_resolution=4",
            "model.roi_mask_head.num_conv=1",
            "model.roi_mask_head.conv_dim=8",
            "model.roi_mask_head.pooler_resolution=4",
            "model.roi_keypoint_head.conv_dims=[8]",
            "model.roi_keypoint_head.num_keypoints=3",
            "model.roi_keypoint_head.pooler_resolution=4",
            *extra,
        ]
    )


TINY_SHAPE = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}


def _features() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "p2": torch.randn(2, 8, IMAGE // 4, IMAGE // 4, generator=g),
        "p3": torch.randn(2, 8, IMAGE // 8, IMAGE // 8, generator=g),
    }


def _rand_proposals(n: int, seed: int) -> Instances:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (IMAGE - 20)
    wh = 4 + torch.rand(n, 2, generator=g) * 16
    p = Instances((IMAGE, IMAGE))
    p.proposal_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    p.objectness_logits = torch.randn(n, generator=g)
    return p


def _targets(with_keypoints: bool = False) -> list[Instances]:
    out = []
    for i, boxes in enumerate(([[4.0, 4.0, 28.0, 30.0], [30.0, 20.0, 60.0, 50.0]], [[10.0, 12.0, 40.0, 44.0]])):
        t = Instances((IMAGE, IMAGE))
        t.gt_boxes = Boxes(torch.tensor(boxes))
        t.gt_classes = torch.tensor([i, 2][: len(boxes)])
        masks = torch.zeros(len(boxes), IMAGE, IMAGE, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate(torch.tensor(boxes).round().long().tolist()):
            masks[j, y0:y1, x0:x1] = True
        t.gt_masks = BitMasks(masks)
        if with_keypoints:
            b = torch.tensor(boxes)
            ctr = (b[:, :2] + b[:, 2:]) / 2
            kps = torch.stack([ctr, b[:, :2] + 2, b[:, 2:] - 2], dim=1)  # (N, 3, 2), all inside their box
            t.gt_keypoints = Keypoints(torch.cat([kps, torch.full((len(boxes), 3, 1), 2.0)], dim=2))
        out.append(t)
    return out


def test_standard_roi_heads_mask_train_and_eval():
    torch.manual_seed(0)
    heads = build_roi_heads(_tiny_cfg("mask_rcnn"), TINY_SHAPE)
    assert isinstance(heads, StandardROIHeads) and heads.mask_on and not heads.keypoint_on
    features = _features()
    proposals = [_rand_proposals(30, 1), _rand_proposals(30, 2)]

    heads.train()
    with EventStorage() as storage:
        sampled, losses = heads(None, features, proposals, _targets())
        stats = _latest(storage)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert len(sampled) == 2 and all(len(s) <= 16 for s in sampled)
    assert {"roi_head/num_fg_samples", "fast_rcnn/cls_accuracy", "mask_rcnn/accuracy"} <= set(stats)
    sum(losses.values()).backward()
    assert heads.box_head.fc1.weight.grad is not None and heads.mask_head.predictor.weight.grad is not None

    heads.eval()
    with torch.no_grad():
        instances, losses = heads(None, features, proposals)
    assert losses == {} and len(instances) == 2
    for inst in instances:
        assert len(inst) > 0
        assert inst.pred_boxes.tensor.shape == (len(inst), 4)
        assert inst.scores.shape == (len(inst),) and inst.pred_classes.max() < 3
        assert inst.pred_masks.shape == (len(inst), 1, 8, 8)  # 2 x mask pooler resolution
        assert ((inst.pred_masks >= 0) & (inst.pred_masks <= 1)).all()
        assert len(inst) <= 100

    # the documented partial-execution snippet
    with torch.no_grad():
        feats = [features[f] for f in heads.box_in_features]
        mask_features = heads.mask_pooler(feats, [x.pred_boxes for x in instances])
    assert mask_features.shape == (sum(len(i) for i in instances), 8, 4, 4)
    # _forward_box in eval returns predicted instances; forward_with_given_boxes adds the masks
    with torch.no_grad():
        pred = heads._forward_box(features, proposals)
        assert not pred[0].has("pred_masks")
        pred = heads.forward_with_given_boxes(features, pred)
    assert torch.allclose(pred[0].pred_masks, instances[0].pred_masks)


def test_standard_roi_heads_keypoints_train_and_eval():
    torch.manual_seed(0)
    cfg = _tiny_cfg("keypoint_rcnn", "model.roi_heads.num_classes=1")
    heads = build_roi_heads(cfg, TINY_SHAPE)
    assert heads.keypoint_on and not heads.mask_on
    targets = _targets(with_keypoints=True)
    for t in targets:
        t.gt_classes = torch.zeros_like(t.gt_classes)
        t.remove("gt_masks")
    heads.train()
    with EventStorage():
        _, losses = heads(None, _features(), [_rand_proposals(20, 3), _rand_proposals(20, 4)], targets)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_keypoint"}
    assert losses["loss_keypoint"].item() > 0

    heads.eval()
    with torch.no_grad():
        instances, _ = heads(None, _features(), [_rand_proposals(20, 3), _rand_proposals(20, 4)])
    for inst in instances:
        assert inst.pred_keypoints.shape == (len(inst), 3, 3)
        assert inst.pred_keypoint_heatmaps.shape == (len(inst), 3, 16, 16)


def test_train_on_pred_boxes_replaces_proposal_boxes():
    torch.manual_seed(0)
    heads = build_roi_heads(_tiny_cfg("mask_rcnn", "model.roi_box_head.train_on_pred_boxes=true"), TINY_SHAPE)
    heads.train()
    with torch.no_grad():
        heads.box_predictor.bbox_pred.bias.fill_(1.0)  # every predicted box differs from its proposal
    with EventStorage():
        sampled = heads.label_and_sample_proposals([_rand_proposals(10, 5), _rand_proposals(10, 6)], _targets())
        before = [s.proposal_boxes.tensor.clone() for s in sampled]
        heads._forward_box(_features(), sampled)
    assert not torch.allclose(sampled[0].proposal_boxes.tensor, before[0])


def test_roi_heads_errors():
    heads = build_roi_heads(_tiny_cfg("mask_rcnn"), TINY_SHAPE)
    heads.train()
    with pytest.raises(ValueError, match="targets"):
        heads(None, _features(), [_rand_proposals(5, 0)] * 2)
    with pytest.raises(KeyError, match="p4"):
        build_roi_heads(_tiny_cfg("mask_rcnn", "model.roi_heads.in_features=[p2,p4]"), TINY_SHAPE)
    with pytest.raises(ValueError, match="equal channels"):
        build_roi_heads(_tiny_cfg("mask_rcnn"), {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(16, stride=8)})


# ------------------------------------------------------------------------------------------------------- Res5ROIHeads


def _tiny_c4_cfg(*extra: str):
    return compose(
        [
            "model=mask_rcnn_c4",
            "backbone=resnet50_c4",
            "model.roi_heads.num_classes=3",
            "model.roi_heads.batch_size_per_image=16",
            "model.roi_heads.score_thresh_test=0.0",
            "model.resnets.res2_out_channels=8",  # res5: 64 out, 32 in
            "model.resnets.width_per_group=2",
            "model.roi_box_head.pooler_resolution=4",
            "model.roi_mask_head.conv_dim=8",
            *extra,
        ]
    )


def test_res5_roi_heads_train_and_eval():
    torch.manual_seed(0)
    heads = build_roi_heads(_tiny_c4_cfg(), {"res4": ShapeSpec(channels=32, stride=16)})
    assert isinstance(heads, Res5ROIHeads) and heads.mask_on
    assert heads.res5[0].conv1.weight.shape[1] == 32 and heads.box_predictor.cls_score.in_features == 64
    features = {"res4": torch.randn(2, 32, IMAGE // 16, IMAGE // 16)}
    proposals = [_rand_proposals(20, 7), _rand_proposals(20, 8)]
    heads.train()
    with EventStorage():
        out, losses = heads(None, features, proposals, _targets())
    assert out == [] and set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())

    heads.eval()
    with torch.no_grad():
        instances, _ = heads(None, features, proposals)
    for inst in instances:
        # pooled 4x4 -> res5 (stride 2) 2x2 -> deconv 4x4 masks
        assert inst.pred_masks.shape == (len(inst), 1, 4, 4)


def test_res5_rejects_keypoints_and_multiple_features():
    with pytest.raises(ValueError, match="keypoint"):
        build_roi_heads(_tiny_c4_cfg("model.keypoint_on=true"), {"res4": ShapeSpec(channels=32, stride=16)})
    with pytest.raises(ValueError, match="exactly one"):
        build_roi_heads(
            _tiny_c4_cfg("model.roi_heads.in_features=[res3,res4]"),
            {"res3": ShapeSpec(channels=16, stride=8), "res4": ShapeSpec(channels=32, stride=16)},
        )


# ------------------------------------------------------------------------------ detectron2 parameter names and shapes


FPN_SHAPE = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
GN_OVERRIDES = [
    "model.roi_box_head.name=FastRCNNConvFCHead",
    "model.roi_box_head.num_conv=4",
    "model.roi_box_head.num_fc=1",
    "model.roi_box_head.norm=GN",
    "model.roi_mask_head.norm=GN",
]
# the model-zoo models are COCO models: the data group sets their class / keypoint counts
CASES = {
    "mask_rcnn_R_50_FPN": (["model=mask_rcnn", "backbone=resnet50", "data=coco"], FPN_SHAPE),
    "keypoint_rcnn_R_50_FPN": (["model=keypoint_rcnn", "backbone=resnet50", "data=coco_keypoints"], FPN_SHAPE),
    "mask_rcnn_R_50_FPN_gn": (["model=mask_rcnn", "backbone=resnet50", "data=coco", *GN_OVERRIDES], FPN_SHAPE),
    "faster_rcnn_R_50_C4": (
        ["model=faster_rcnn_c4", "backbone=resnet50_c4", "data=coco"],
        {"res4": ShapeSpec(channels=1024, stride=16)},
    ),
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_state_dict_matches_detectron2_manifest(arch: str, compat_dir: Path):
    manifest = json.loads((compat_dir / arch / "manifest.json").read_text())
    if arch.endswith("_gn"):
        assert manifest["detectron2_config"] == "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"
    expected = {k: list(v) for k, v in manifest["shapes"].items() if k.startswith("roi_heads.")}
    overrides, input_shape = CASES[arch]
    heads = build_roi_heads(compose(overrides), input_shape)
    ours = {f"roi_heads.{k}": list(v.shape) for k, v in heads.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == [], "keys detectron2 does not have"
    assert sorted(set(expected) - set(ours)) == [], "detectron2 keys we lack"
    assert ours == expected
