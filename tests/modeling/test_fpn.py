"""FPN: output levels, hand-computed top-down fusion, top blocks, and detectron2 state_dict names per manifest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)

RETINANET = [
    "model.backbone.name=build_retinanet_resnet_fpn_backbone",
    "model.resnets.out_features=[res3,res4,res5]",
    "model.fpn.in_features=[res3,res4,res5]",
]


class _FixedFeatures(Backbone):
    """A bottom-up 'backbone' returning given tensors (strides 4, 8, 16), to check FPN arithmetic by hand."""

    def __init__(self, feats: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.feats = feats
        self._out_features = list(feats)
        self._out_feature_channels = {k: v.shape[1] for k, v in feats.items()}
        self._out_feature_strides = {k: 4 * 2**i for i, k in enumerate(feats)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.feats)


def _identity_convs(fpn: FPN) -> None:
    """1 -> 1 channel: lateral convs multiply by 1, output convs are 3x3 identity kernels, biases 0."""
    with torch.no_grad():
        for name, m in fpn.named_children():
            if name.startswith("fpn_lateral"):
                m.weight.fill_(1.0)
            elif name.startswith("fpn_output"):
                m.weight.zero_()
                m.weight[0, 0, 1, 1] = 1.0
            if name.startswith("fpn_"):
                m.bias.zero_()


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_top_down_fusion_by_hand(fuse_type: str) -> None:
    rng = np.random.default_rng(0)
    c2 = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    c3 = rng.standard_normal((1, 1, 2, 2)).astype(np.float32)
    c4 = rng.standard_normal((1, 1, 1, 1)).astype(np.float32)
    feats = {"res2": c2, "res3": c3, "res4": c4}
    bottom_up = _FixedFeatures({k: torch.from_numpy(v) for k, v in feats.items()})
    fpn = FPN(bottom_up, ["res2", "res3", "res4"], out_channels=1, top_block=LastLevelMaxPool(), fuse_type=fuse_type)
    fpn.top_block.in_feature = "p4"  # the pyramid ends at p4 here
    _identity_convs(fpn)
    with torch.no_grad():
        out = fpn(torch.zeros(1, 3, 16, 16))
    up = lambda a: a.repeat(2, axis=2).repeat(2, axis=3)  # noqa: E731  nearest 2x
    div = 2.0 if fuse_type == "avg" else 1.0
    p4 = c4
    p3 = (c3 + up(p4)) / div
    p2 = (c2 + up(p3)) / div
    assert list(out) == ["p2", "p3", "p4", "p5"]
    np.testing.assert_allclose(out["p4"].numpy(), p4, rtol=1e-6)
    np.testing.assert_allclose(out["p3"].numpy(), p3, rtol=1e-5)
    np.testing.assert_allclose(out["p2"].numpy(), p2, rtol=1e-5)
    np.testing.assert_allclose(out["p5"].numpy(), p4[:, :, ::2, ::2], rtol=1e-6)


def test_names_strides_and_size_divisibility() -> None:
    bottom_up = _FixedFeatures({"res2": torch.zeros(1, 3, 8, 8), "res3": torch.zeros(1, 5, 4, 4)})
    fpn = FPN(bottom_up, ["res2", "res3"], out_channels=7, square_pad=1024)
    names = {n for n, _ in fpn.named_children()}
    assert {"fpn_lateral2", "fpn_output2", "fpn_lateral3", "fpn_output3", "bottom_up"} <= names
    assert fpn.fpn_lateral3.weight.shape == (7, 5, 1, 1) and fpn.fpn_output2.weight.shape == (7, 7, 3, 3)
    assert fpn.output_shape() == {"p2": ShapeSpec(channels=7, stride=4), "p3": ShapeSpec(channels=7, stride=8)}
    assert fpn.size_divisibility == 8
    assert fpn.padding_constraints == {"square_size": 1024}


def test_invalid_arguments() -> None:
    bottom_up = _FixedFeatures(
        {"res2": torch.zeros(1, 3, 8, 8), "res3": torch.zeros(1, 5, 4, 4), "res4": torch.zeros(1, 5, 2, 2)}
    )
    with pytest.raises(ValueError, match="double"):
        FPN(bottom_up, ["res2", "res4"], out_channels=4)
    with pytest.raises(ValueError, match="fuse_type"):
        FPN(bottom_up, ["res2"], out_channels=4, fuse_type="max")
    with pytest.raises(ValueError, match="res7"):
        FPN(bottom_up, ["res7"], out_channels=4)
    with pytest.raises(TypeError, match="Backbone"):
        FPN(torch.nn.Identity(), ["res2"], out_channels=4)  # type: ignore[arg-type]


def test_resnet_fpn_outputs_p2_to_p6() -> None:
    cfg = compose(["backbone=resnet50"])
    fpn = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert fpn.output_shape() == {f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in range(2, 7)}
    assert fpn.size_divisibility == 32
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{k}": (1, 256, 64 >> k, 128 >> k) for k in range(2, 7)
    }
    # p6 subsamples p5
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])


def test_retinanet_fpn_outputs_p3_to_p7() -> None:
    assert BACKBONE_REGISTRY.get("build_retinanet_resnet_fpn_backbone") is build_retinanet_resnet_fpn_backbone
    cfg = compose(["backbone=resnet50", *RETINANET])
    fpn = build_backbone(cfg).eval()
    assert isinstance(fpn.top_block, LastLevelP6P7) and fpn.top_block.in_feature == "res5"
    assert fpn.output_shape() == {f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in range(3, 8)}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = fpn(x)
        res5 = fpn.bottom_up(x)["res5"]
        top = fpn.top_block
        p6 = F.conv2d(res5, top.p6.weight, top.p6.bias, stride=2, padding=1)
        p7 = F.conv2d(F.relu(p6), top.p7.weight, top.p7.bias, stride=2, padding=1)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert torch.allclose(out["p6"], p6, atol=1e-5) and torch.allclose(out["p7"], p7, atol=1e-5)


def test_gn_fpn_has_no_bias() -> None:
    cfg = compose(
        ["backbone=resnet50", "model.resnets.depth=18", "model.resnets.res2_out_channels=64", "model.fpn.norm=GN"]
    )
    fpn = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert fpn.fpn_lateral2.bias is None and isinstance(fpn.fpn_lateral2.norm, torch.nn.GroupNorm)
    assert fpn.fpn_lateral5.weight.shape == (256, 512, 1, 1)


# --- detectron2 state_dict names/shapes for model-zoo configs -----------------------------------------------------

MANIFEST_CASES = {
    "mask_rcnn_R_50_FPN": ["model=mask_rcnn", "backbone=resnet50"],
    "mask_rcnn_X_101_32x8d_FPN": ["model=mask_rcnn", "backbone=resnext101_32x8d"],
    "mask_rcnn_R_50_FPN_gn": [
        "model=mask_rcnn",
        "backbone=resnet50",
        "model.resnets.norm=GN",
        "model.resnets.stride_in_1x1=false",
        "model.fpn.norm=GN",
    ],
    "retinanet_R_50_FPN": ["backbone=resnet50", *RETINANET],
    "faster_rcnn_R_50_FPN": ["model=faster_rcnn", "backbone=resnet50"],
}


@pytest.mark.parametrize("arch", sorted(MANIFEST_CASES))
def test_state_dict_matches_manifest(arch: str, compat_dir: Path) -> None:
    manifest = json.loads((compat_dir / arch / "manifest.json").read_text())
    expected = {k: tuple(v) for k, v in manifest["shapes"].items() if k.startswith("backbone.")}
    backbone = build_backbone(compose(MANIFEST_CASES[arch]))
    got = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert got == expected
