"""GeneralizedRCNN / ProposalNetwork / build_model: input validation, training and inference end to end on tiny
models (ResNet-18 FPN, 64x64 images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.modeling.meta_arch import META_ARCH_REGISTRY, GeneralizedRCNN, ProposalNetwork, build_model
from detlightning.structures import Boxes, Instances
from detlightning.utils.events import EventStorage, EventStorageError

TINY = [
    "backbone=resnet50",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=32",
    "model.rpn.batch_size_per_image=64",
]


def _cfg(model: str = "faster_rcnn", *extra: str):
    return compose([f"model={model}", *TINY, *extra])


@pytest.fixture(scope="module")
def model() -> GeneralizedRCNN:
    torch.manual_seed(0)
    return build_model(_cfg())


def _image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _instances(h: int = 64, w: int = 64) -> Instances:
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    return inst


# ------------------------------------------------------------------------------------------------ building
def test_build_model_and_buffers(model: GeneralizedRCNN):
    assert isinstance(model, GeneralizedRCNN)
    assert model.device == torch.device("cpu")
    sd = model.state_dict()
    # d2-parity: pixel_mean/std are non-persistent buffers (not in detectron2 checkpoints)
    assert "pixel_mean" not in sd and "pixel_std" not in sd
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor([103.530, 116.280, 123.675]))
    assert model.pixel_mean.shape == (3, 1, 1)
    assert "proposal_generator.rpn_head.conv.weight" in sd
    assert "roi_heads.box_predictor.cls_score.weight" in sd
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 classes + background
    assert model.input_format == "BGR" and model.vis_period == 0


def test_build_model_unknown_name_lists_registered_ones():
    cfg = _cfg()
    cfg.model.meta_architecture = "NoSuchArch"
    with pytest.raises(KeyError, match="GeneralizedRCNN") as e:
        build_model(cfg)
    assert "NoSuchArch" in str(e.value)
    assert "ProposalNetwork" in META_ARCH_REGISTRY


# ------------------------------------------------------------------------------------------------ inference
def test_eval_forward_returns_rescaled_instances(model: GeneralizedRCNN):
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(), "height": 128, "width": 96}, {"image": _image(48, 56, seed=1)}])
    assert len(out) == 2 and all(set(o) == {"instances"} for o in out)
    for o, (h, w) in zip(out, [(128, 96), (48, 56)]):
        inst = o["instances"]
        assert inst.image_size == (h, w)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())
        assert len(inst) <= 100
        b = inst.pred_boxes.tensor
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b >= 0).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all()


def test_float_and_uint8_images_give_the_same_result(model: GeneralizedRCNN):
    model.eval()
    img = _image()
    with torch.no_grad():
        a = model.preprocess_image([{"image": img}])
        b = model.preprocess_image([{"image": img.float()}])
        c = model.preprocess_image([{"image": img.double()}])
    # independent normalisation: (x - mean) / std with BGR means
    expected = (img.float() - torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)) / 1.0
    torch.testing.assert_close(a.tensor[0, :, :64, :64], expected)
    torch.testing.assert_close(a.tensor, b.tensor)
    assert c.tensor.dtype == torch.float32
    # FPN: padded to a multiple of 32
    sizes = model.preprocess_image([{"image": _image(50, 70)}]).tensor.shape[-2:]
    assert tuple(sizes) == (64, 96)


def test_input_validation_errors_are_clear(model: GeneralizedRCNN):
    model.eval()
    with pytest.raises(KeyError, match="'image'"):
        model([{"height": 64, "width": 64}])
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([{"image": np.zeros((3, 64, 64), dtype=np.uint8)}])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        model([{"image": torch.zeros(64, 64, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match="4 channels but pixel_mean has 3"):
        model([{"image": torch.zeros(4, 64, 64, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match="channels"):
        model([{"image": torch.zeros(64, 64, 3, dtype=torch.uint8)}])  # HWC by mistake
    with pytest.raises(TypeError, match="list of dicts"):
        model({"image": _image()})
    with pytest.raises(TypeError, match="list of dicts"):
        model([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to test moving inputs")
def test_inputs_on_another_device_are_moved_to_the_model():
    m = build_model(_cfg()).eval()
    with torch.no_grad():
        out = m([{"image": _image().cuda()}])
    assert out[0]["instances"].pred_boxes.device.type == "cpu"


def test_inference_with_detected_instances_and_without_postprocess(model: GeneralizedRCNN):
    model.eval()
    given = Instances((64, 64))
    given.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
    given.pred_classes = torch.tensor([1])
    with torch.no_grad():
        raw = model.inference([{"image": _image()}], detected_instances=[given], do_postprocess=False)
        out = model.inference([{"image": _image(), "height": 32, "width": 32}], detected_instances=[given])
    assert isinstance(raw[0], Instances) and raw[0].image_size == (64, 64)
    torch.testing.assert_close(out[0]["instances"].pred_boxes.tensor, torch.tensor([[0.5, 1.0, 15.0, 20.0]]))
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.inference([{"image": _image()}])
    model.eval()


# ------------------------------------------------------------------------------------------------ training
def test_training_step_returns_all_losses_and_backpropagates():
    torch.manual_seed(0)
    m = build_model(_cfg()).train()
    with EventStorage() as storage:
        losses = m([{"image": _image(), "instances": _instances()},
                    {"image": _image(48, 64, seed=2), "instances": _instances(48, 64)[:1]}])
        latest = storage.latest()
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    assert losses["loss_cls"] > 0 and losses["loss_rpn_cls"] > 0
    assert "rpn/num_pos_anchors" in latest and "roi_head/num_fg_samples" in latest
    sum(losses.values()).backward()
    assert m.proposal_generator.rpn_head.conv.weight.grad.abs().sum() > 0
    assert m.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_training_on_an_image_without_annotations(model: GeneralizedRCNN):
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    model.train()
    try:
        with EventStorage():
            losses = model([{"image": _image(), "instances": empty}])
    finally:
        model.eval()
    # no positives: nothing to regress, but background classification still counts
    assert losses["loss_rpn_loc"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_cls"].item() > 0 and losses["loss_cls"].item() > 0


def test_training_validation_errors(model: GeneralizedRCNN):
    model.train()
    try:
        with pytest.raises(EventStorageError, match="EventStorage"):
            model([{"image": _image(), "instances": _instances()}])
        with pytest.raises(RuntimeError):  # EventStorageError is a RuntimeError too
            model([{"image": _image(), "instances": _instances()}])
        with EventStorage():
            with pytest.raises(KeyError, match="'instances'"):
                model([{"image": _image(), "instances": _instances()}, {"image": _image()}])
            no_classes = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 9, 9]])))
            with pytest.raises(ValueError, match="'gt_classes'"):
                model([{"image": _image(), "instances": no_classes}])
            with pytest.raises(TypeError, match="Instances"):
                model([{"image": _image(), "instances": {"gt_boxes": [[0, 0, 9, 9]]}}])
    finally:
        model.eval()


def test_vis_period_puts_an_image_into_the_storage():
    torch.manual_seed(0)
    m = build_model(_cfg()).train()
    m.vis_period = 1
    with EventStorage() as storage:
        m([{"image": _image(), "instances": _instances()}])
        vis = storage.vis_data
    assert len(vis) == 1
    name, img, _ = vis[0]
    assert "proposals" in name.lower() and tuple(img.shape) == (3, 64, 128)


# ------------------------------------------------------------------------------------------------ Fast R-CNN
def _proposals(h: int = 64, w: int = 64) -> Instances:
    p = Instances((h, w))
    p.proposal_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [0.0, 0.0, 20.0, 20.0], [28.0, 18.0, 62.0, 60.0]]))
    p.objectness_logits = torch.tensor([3.0, 1.0, 2.0])
    return p


def test_fast_rcnn_uses_precomputed_proposals():
    torch.manual_seed(0)
    m = build_model(_cfg("fast_rcnn"))
    assert m.proposal_generator is None
    m.train()
    with EventStorage():
        with pytest.raises(KeyError, match="'proposals'"):
            m([{"image": _image(), "instances": _instances()}])
        losses = m([{"image": _image(), "instances": _instances(), "proposals": _proposals()}])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    m.eval()
    with torch.no_grad():
        out = m([{"image": _image(), "proposals": _proposals()}])
        with pytest.raises(KeyError, match="'proposals'"):
            m([{"image": _image()}])
    assert "instances" in out[0]


# ------------------------------------------------------------------------------------------------ ProposalNetwork
def test_proposal_network_eval_and_training():
    torch.manual_seed(0)
    m = build_model(_cfg("rpn"))
    assert isinstance(m, ProposalNetwork)
    assert "pixel_mean" not in m.state_dict()
    m.eval()
    with torch.no_grad():
        out = m([{"image": _image(), "height": 32, "width": 128}])
    props = out[0]["proposals"]
    assert props.image_size == (32, 128)
    assert set(props.get_fields()) == {"proposal_boxes", "objectness_logits"}
    b = props.proposal_boxes.tensor
    assert len(b) > 0 and (b[:, 2] <= 128).all() and (b[:, 3] <= 32).all()
    m.train()
    with pytest.raises(EventStorageError):
        m([{"image": _image(), "instances": _instances()}])
    with EventStorage():
        losses = m([{"image": _image(), "instances": _instances()}])
        with pytest.raises(KeyError, match="'instances'"):
            m([{"image": _image()}])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
