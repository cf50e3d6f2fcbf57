"""SemanticSegmentor + SemSegFPNHead on tiny models: structure, output size, ignore value, loss and training."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling import build_model
from detlightning.modeling.meta_arch import SemanticSegmentor, SemSegFPNHead
from detlightning.utils.events import EventStorage

TINY = [
    "model=semantic_fpn",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.sem_seg_head.convs_dim=32",
    "model.sem_seg_head.num_classes=5",
]


def _model(*extra: str) -> SemanticSegmentor:
    torch.manual_seed(0)
    return build_model(compose([*TINY, *extra]))


@pytest.fixture(scope="module")
def model() -> SemanticSegmentor:
    return _model()


def _image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _target(h: int = 64, w: int = 64) -> torch.Tensor:
    t = torch.zeros(h, w, dtype=torch.long)
    t[: h // 2] = 1
    t[:, w // 2 :] = 3
    t[:4] = 255  # ignored
    return t


def test_head_structure_follows_strides(model: SemanticSegmentor):
    head = model.sem_seg_head
    assert isinstance(head, SemSegFPNHead) and head.in_features == ["p2", "p3", "p4", "p5"]
    # stride 4 -> 1 conv, stride 8 -> conv+up, 16 -> 2x(conv+up), 32 -> 3x(conv+up)
    convs = {f: sum(isinstance(m, torch.nn.Conv2d) for m in getattr(head, f)) for f in head.in_features}
    assert convs == {"p2": 1, "p3": 1, "p4": 2, "p5": 3}
    assert sum(isinstance(m, torch.nn.Upsample) for m in head.p5) == 3
    sd = model.state_dict()
    # GN (default norm) -> conv without bias, norm named "norm"
    assert "sem_seg_head.p2.0.norm.weight" in sd and "sem_seg_head.p2.0.bias" not in sd
    assert sd["sem_seg_head.predictor.weight"].shape == (5, 32, 1, 1)
    assert head.ignore_value == 255 and head.common_stride == 4


def test_eval_output_is_resized_to_the_requested_size(model: SemanticSegmentor):
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(), "height": 100, "width": 80}, {"image": _image(40, 56, seed=1)}])
    assert [set(o) for o in out] == [{"sem_seg"}, {"sem_seg"}]
    assert out[0]["sem_seg"].shape == (5, 100, 80)
    assert out[1]["sem_seg"].shape == (5, 40, 56)
    assert out[0]["sem_seg"].dtype == torch.float32


def test_eval_output_equals_head_logits_cropped_and_resized(model: SemanticSegmentor):
    model.eval()
    inp = {"image": _image(40, 56, seed=1), "height": 80, "width": 112}
    with torch.no_grad():
        out = model([inp])[0]["sem_seg"]
        x = (inp["image"].float() - model.pixel_mean) / model.pixel_std
        x = F.pad(x, (0, 64 - 56, 0, 64 - 40))  # FPN pads to a multiple of 32
        feats = model.backbone(x[None])
        logits = model.sem_seg_head.layers(feats)
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[:, :, :40, :56]
        expected = F.interpolate(logits, size=(80, 112), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected)


def test_loss_is_weighted_cross_entropy_ignoring_ignore_value():
    shapes = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}
    head = SemSegFPNHead(shapes, num_classes=3, conv_dims=8, common_stride=4, loss_weight=0.5, norm="",
                         ignore_value=255)
    head.train()
    feats = {"p2": torch.randn(1, 8, 4, 4), "p3": torch.randn(1, 8, 2, 2)}
    target = torch.randint(0, 3, (1, 16, 16))
    target[0, :5] = 255
    _, losses = head(feats, target)
    logits = F.interpolate(head.layers(feats), scale_factor=4, mode="bilinear", align_corners=False)
    valid = target != 255
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[valid]  # (P, C)
    expected = -logp.gather(1, target[valid][:, None]).mean() * 0.5
    torch.testing.assert_close(losses["loss_sem_seg"], expected)


def test_training_loss_falls():
    model = _model()
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.bottom_up")]
    opt = torch.optim.SGD(params, lr=0.05)
    batch = [{"image": _image(), "sem_seg": _target()}, {"image": _image(48, 64, seed=2), "sem_seg": _target(48, 64)}]
    history = []
    with EventStorage():
        for _ in range(6):
            losses = model(batch)
            assert set(losses) == {"loss_sem_seg"}
            history.append(float(losses["loss_sem_seg"].detach()))
            opt.zero_grad()
            losses["loss_sem_seg"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    assert history[-1] < 0.85 * history[0], history


def test_training_needs_sem_seg(model: SemanticSegmentor):
    model.train()
    with pytest.raises(KeyError, match="sem_seg"):
        model([{"image": _image()}])
    model.eval()


def test_pixel_mean_and_std_must_have_the_same_channels(model: SemanticSegmentor):
    with pytest.raises(ValueError, match=r"SemanticSegmentor: pixel_mean \(3 values\) and pixel_std \(1 values\)"):
        SemanticSegmentor(
            backbone=model.backbone,
            sem_seg_head=model.sem_seg_head,
            pixel_mean=[103.53, 116.28, 123.675],
            pixel_std=[1.0],
        )


@pytest.mark.parametrize("norm", ["", "GN", "BN", "SyncBN"])
def test_head_norm_variants(norm: str):
    shapes = {"p2": ShapeSpec(channels=32, stride=4), "p3": ShapeSpec(channels=32, stride=8)}
    head = SemSegFPNHead(shapes, num_classes=3, conv_dims=32, common_stride=4, norm=norm)
    conv = head.p2[0]
    assert (conv.bias is None) == bool(norm)
    assert (conv.norm is None) == (not norm)
    head.train()
    out, losses = head({"p2": torch.randn(2, 32, 8, 8), "p3": torch.randn(2, 32, 4, 4)},
                       torch.randint(0, 3, (2, 32, 32)))
    assert out is None and losses["loss_sem_seg"].isfinite()
