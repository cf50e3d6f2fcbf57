"""detectron2's documented model usage, run as a user would (tiny models so it stays fast):
build → save/load → eval on list[dict]; training losses fall; a user backbone selected by name; partial execution."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling import BACKBONE_REGISTRY, Backbone, build_model
from detlightning.structures import BitMasks, Boxes, Instances
from detlightning.utils.events import EventStorage

TINY = [
    "backbone=resnet50",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=64",
    "model.rpn.batch_size_per_image=64",
    "model.roi_mask_head.conv_dim=32",
    "model.roi_box_head.fc_dim=64",
]


def _sample(seed: int = 0, size: int = 96) -> dict:
    """A dark image with two bright rectangles and their annotations."""
    image = torch.full((3, size, size), 20, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 44.0], [48.0, 40.0, 90.0, 88.0]])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        image[:, y0:y1, x0:x1] = 200 - 60 * i
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 1]), gt_masks=BitMasks(masks))
    return {"image": image, "instances": inst}


def test_build_save_load_and_predict_at_requested_size(tmp_path, caplog):
    torch.manual_seed(0)
    cfg = compose(["model=mask_rcnn", *TINY])
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_999")
    assert (tmp_path / "model_999.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_999.pth"

    torch.manual_seed(1)
    other = build_model(cfg)
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(other).load(str(tmp_path / "model_999.pth"))
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    other.eval()
    with torch.no_grad():
        outputs = other([{"image": _sample()["image"], "height": 192, "width": 144}, {"image": _sample()["image"]}])
    assert len(outputs) == 2
    first, second = outputs[0]["instances"], outputs[1]["instances"]
    assert first.image_size == (192, 144) and second.image_size == (96, 96)
    for inst in (first, second):
        assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(inst.get_fields())
    if len(first):
        assert first.pred_masks.shape[-2:] == (192, 144)
        assert first.pred_boxes.tensor[:, 2].max() <= 144 and first.pred_boxes.tensor[:, 3].max() <= 192


def test_training_losses_fall_over_a_few_sgd_steps():
    torch.manual_seed(0)
    # from scratch (no ImageNet weights offline), so a trainable norm in the backbone, as for scratch training
    model = build_model(compose(["model=mask_rcnn", *TINY, "model.resnets.norm=GN", "model.backbone.freeze_at=0"]))
    model.train()
    batch = [_sample()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    totals = []
    with EventStorage() as storage:
        for _ in range(12):
            losses = model(batch)
            assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
            loss = sum(losses.values())
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            storage.step()
            totals.append(loss.item())
        assert "fast_rcnn/cls_accuracy" in storage.histories()
    assert min(totals[-3:]) < 0.75 * totals[0], totals


@BACKBONE_REGISTRY.register()
class ToyBackbone(Backbone):
    """The backbone from detectron2's "Write Models" tutorial, constructed as ``cls(cfg, input_shape)``."""

    def __init__(self, cfg, input_shape: ShapeSpec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape.channels, 64, kernel_size=7, stride=16, padding=3)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"conv1": self.conv1(image)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"conv1": ShapeSpec(channels=64, stride=16)}


def test_user_registered_backbone_is_selected_by_name():
    cfg = compose([
        "model=faster_rcnn",
        *TINY,
        "model.backbone.name=ToyBackbone",
        "model.rpn.in_features=[conv1]",
        "model.anchor_generator.sizes=[[16,32,64]]",
        "model.roi_heads.in_features=[conv1]",
    ])
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, ToyBackbone)
    with torch.no_grad():
        out = model([{"image": _sample()["image"]}])
    assert out[0]["instances"].image_size == (96, 96)
    model.train()
    with EventStorage():
        assert "loss_cls" in model([_sample()])


def test_unknown_component_name_lists_registered_ones():
    with pytest.raises(KeyError, match="build_resnet_fpn_backbone"):
        build_model(compose(["model.backbone.name=NoSuchBackbone"]))


def test_partial_execution_snippet():
    # detectron2 docs, "Use Models": run parts of the model by hand
    torch.manual_seed(0)
    model = build_model(compose(["model=mask_rcnn", *TINY])).eval()
    inputs = [{"image": _sample()["image"]}]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        instances, _ = model.roi_heads(images, features, proposals)
        mask_features = [features[f] for f in model.roi_heads.in_features]
        mask_features = model.roi_heads.mask_pooler(mask_features, [x.pred_boxes for x in instances])
        # the box branch alone, as in the docs' "_forward_box" snippet
        box_instances = model.roi_heads._forward_box(features, proposals)
    assert set(features) == {"p2", "p3", "p4", "p5", "p6"}
    assert len(proposals[0]) > 0
    assert mask_features.shape == (len(instances[0]), 32, 14, 14)
    assert len(box_instances[0]) == len(instances[0])
    torch.testing.assert_close(box_instances[0].pred_boxes.tensor, instances[0].pred_boxes.tensor)
