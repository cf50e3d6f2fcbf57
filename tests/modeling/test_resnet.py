"""ResNet: shapes/strides, freezing, stage options, numerical agreement with torchvision, C4 manifest keys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from detlightning.config import compose
from detlightning.layers import FrozenBatchNorm2d, ShapeSpec
from detlightning.modeling.backbone import BasicStem, BottleneckBlock, ResNet, build_resnet_backbone, make_stage
from detlightning.modeling.backbone.resnet import BasicBlock

ALL = "[res2,res3,res4,res5]"


def _cfg(*overrides: str):
    return compose(["backbone=resnet50_c4", *overrides])


def _r18_cfg(*overrides: str):
    return _cfg(
        "model.resnets.depth=18", "model.resnets.res2_out_channels=64", f"model.resnets.out_features={ALL}", *overrides
    )


@pytest.mark.parametrize(
    "depth, channels",
    [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])],
)
def test_output_shapes_and_strides(depth: int, channels: list[int]) -> None:
    extra = ["model.resnets.res2_out_channels=64"] if depth == 18 else []
    cfg = _cfg(f"model.resnets.depth={depth}", f"model.resnets.out_features={ALL}", *extra)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert model.output_shape() == {
        f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate(channels)
    }
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for i, c in enumerate(channels):
        assert out[f"res{i + 2}"].shape == (2, c, 16 >> i, 16 >> i)
    assert model.size_divisibility == 0


def test_c4_backbone_stops_at_res4() -> None:
    model = build_resnet_backbone(_cfg(), ShapeSpec(channels=3))
    names = {n for n, _ in model.named_children()}
    assert names == {"stem", "res2", "res3", "res4"}
    assert model.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}
    assert [len(s) for s in model.stages] == [3, 4, 6]


def test_freeze_at() -> None:
    model = build_resnet_backbone(_r18_cfg("model.resnets.norm=BN", "model.backbone.freeze_at=2"), ShapeSpec(3))
    for name, p in model.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert p.requires_grad != frozen, name
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res2[1].conv2.norm, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)
    # frozen batch-norm tensors are buffers, not parameters
    assert not any(n.startswith(("stem.conv1.norm", "res2.0.conv1.norm")) for n, _ in model.named_parameters())
    assert "stem.conv1.norm.running_mean" in model.state_dict()

    none_frozen = build_resnet_backbone(_r18_cfg("model.resnets.norm=BN", "model.backbone.freeze_at=0"), ShapeSpec(3))
    assert all(p.requires_grad for p in none_frozen.parameters())
    stem_only = build_resnet_backbone(_r18_cfg("model.resnets.norm=BN", "model.backbone.freeze_at=1"), ShapeSpec(3))
    assert {n.split(".")[0] for n, p in stem_only.named_parameters() if not p.requires_grad} == {"stem"}


def test_frozen_bn_norm_has_no_trainable_norm_params() -> None:
    model = build_resnet_backbone(_r18_cfg("model.backbone.freeze_at=0"), ShapeSpec(channels=3))  # norm FrozenBN
    assert all(".norm." not in n for n, _ in model.named_parameters())
    assert "res5.0.conv1.norm.running_var" in model.state_dict()


def test_res5_dilation_keeps_stride_16() -> None:
    cfg = _cfg(f"model.resnets.out_features={ALL}", "model.resnets.res5_dilation=2")
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert model.output_shape()["res5"] == ShapeSpec(channels=2048, stride=16)
    assert model.res5[0].conv2.dilation == (2, 2) and model.res5[0].conv2.padding == (2, 2)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))["res5"].shape == (1, 2048, 4, 4)


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_placement(stride_in_1x1: bool) -> None:
    model = build_resnet_backbone(_cfg(f"model.resnets.stride_in_1x1={stride_in_1x1}"), ShapeSpec(channels=3))
    block = model.res3[0]
    assert block.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
    assert block.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))
    assert block.shortcut.stride == (2, 2)


def test_resnext_grouped_conv() -> None:
    cfg = _cfg("model.resnets.num_groups=32", "model.resnets.width_per_group=4")
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    conv2 = model.res2[0].conv2
    assert conv2.groups == 32 and conv2.weight.shape == (128, 4, 3, 3)
    assert model.res4[0].conv2.weight.shape == (512, 16, 3, 3)


def test_invalid_configs() -> None:
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        build_resnet_backbone(_cfg("model.resnets.deform_on_per_stage=[false,true]"), ShapeSpec(3))
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        build_resnet_backbone(
            _cfg("model.resnets.depth=18", "model.resnets.res2_out_channels=64",
                 "model.resnets.deform_on_per_stage=[false,true,false,false]"),
            ShapeSpec(3),
        )
    with pytest.raises(ValueError, match="depth"):
        build_resnet_backbone(_cfg("model.resnets.depth=42"), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="res2_out_channels"):
        build_resnet_backbone(_cfg("model.resnets.depth=18"), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="out_features"):
        build_resnet_backbone(_cfg("model.resnets.out_features=[res6]"), ShapeSpec(channels=3))


def test_make_stage_per_block_arguments() -> None:
    blocks = ResNet.make_stage(
        BottleneckBlock,
        3,
        in_channels=16,
        out_channels=64,
        bottleneck_channels=16,
        stride_per_block=[2, 1, 1],
        dilation_per_block=[1, 1, 2],
        norm="BN",
    )
    assert [b.stride for b in blocks] == [2, 1, 1]
    assert [b.conv2.dilation for b in blocks] == [(1, 1), (1, 1), (2, 2)]
    assert [b.in_channels for b in blocks] == [16, 64, 64]
    assert blocks[0].shortcut is not None and blocks[1].shortcut is None
    assert [b.stride for b in make_stage(BasicBlock, 2, first_stride=2, in_channels=8, out_channels=8)] == [2, 1]
    with pytest.raises(ValueError, match="num_blocks=3"):
        ResNet.make_stage(BasicBlock, 3, in_channels=8, out_channels=8, stride_per_block=[2, 1])
    with pytest.raises(ValueError, match="both"):
        ResNet.make_stage(BasicBlock, 2, in_channels=8, out_channels=8, stride_per_block=[2, 1], stride=1)


def test_res5_block_as_built_by_res5_roi_heads() -> None:
    blocks = ResNet.make_stage(
        BottleneckBlock,
        3,
        stride_per_block=[2, 1, 1],
        in_channels=1024,
        bottleneck_channels=512,
        out_channels=2048,
        num_groups=1,
        norm="FrozenBN",
        stride_in_1x1=True,
        dilation=1,
    )
    res5 = nn.Sequential(*blocks).eval()
    with torch.no_grad():
        assert res5(torch.randn(2, 1024, 14, 14)).shape == (2, 2048, 7, 7)


def test_default_stages_classifier_and_out_features() -> None:
    stages = ResNet.make_default_stages(50, norm="BN")
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    model = ResNet(BasicStem(norm="BN"), stages, num_classes=10, out_features=["stem", "res3", "linear"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["stem"].shape == (1, 64, 16, 16) and out["res3"].shape == (1, 512, 8, 8)
    assert out["linear"].shape == (1, 10)
    trimmed = ResNet(BasicStem(norm="BN"), ResNet.make_default_stages(18, norm="BN"), out_features=["res3"])
    assert {n for n, _ in trimmed.named_children()} == {"stem", "res2", "res3"}
    with pytest.raises(ValueError, match="res9"):
        ResNet(BasicStem(), ResNet.make_default_stages(18), out_features=["res9"])


# --- numerical agreement with torchvision's ResNets (independent implementation) --------------------------------


def _torchvision_to_d2_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        if k.startswith("conv1."):
            k = "stem." + k
        elif k.startswith("bn1."):
            k = "stem.conv1.norm." + k[len("bn1.") :]
        else:
            parts = k.split(".")  # layer1.0.bn2.weight / layer1.0.downsample.1.weight
            stage = f"res{int(parts[0][len('layer'):]) + 1}"
            rest = parts[2:]
            if rest[0] == "downsample":
                rest = ["shortcut"] + (["norm"] if rest[1] == "1" else []) + rest[2:]
            elif rest[0].startswith("bn"):
                rest = [f"conv{rest[0][2:]}", "norm"] + rest[1:]
            k = ".".join([stage, parts[1], *rest])
        out[k] = v
    return out


def _randomise_bn_stats(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize(
    "tv_name, overrides",
    [
        ("resnet18", ["model.resnets.depth=18", "model.resnets.res2_out_channels=64"]),
        ("resnet50", ["model.resnets.stride_in_1x1=false"]),
        (
            "resnext50_32x4d",
            ["model.resnets.stride_in_1x1=false", "model.resnets.num_groups=32", "model.resnets.width_per_group=4"],
        ),
    ],
)
def test_matches_torchvision(tv_name: str, overrides: list[str]) -> None:
    torch.manual_seed(0)
    ref = getattr(torchvision.models, tv_name)(weights=None)
    _randomise_bn_stats(ref)
    ref.eval()
    cfg = _cfg(f"model.resnets.out_features={ALL}", "model.resnets.norm=BN", "model.backbone.freeze_at=0", *overrides)
    ours = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours.load_state_dict(_torchvision_to_d2_names(ref.state_dict()), strict=True)
    # FrozenBN must compute the same as eval-mode BatchNorm
    ours_frozen = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours_frozen.load_state_dict(ours.state_dict())
    ours_frozen.freeze(5)

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        c2 = ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))
        c3 = ref.layer2(c2)
        c4 = ref.layer3(c3)
        c5 = ref.layer4(c4)
        out = ours(x)
        out_frozen = ours_frozen(x)
    for name, expected in zip(["res2", "res3", "res4", "res5"], [c2, c3, c4, c5]):
        assert torch.allclose(out[name], expected, atol=1e-4, rtol=1e-4), name
        assert torch.allclose(out_frozen[name], expected, atol=1e-4, rtol=1e-4), name


# --- detectron2 parameter names (C4: the backbone holds res2..res4 only) ------------------------------------------


def test_c4_state_dict_matches_manifest(compat_dir: Path) -> None:
    manifest = json.loads((compat_dir / "faster_rcnn_R_50_C4" / "manifest.json").read_text())
    expected = {k: tuple(v) for k, v in manifest["shapes"].items() if k.startswith("backbone.")}
    model = build_resnet_backbone(compose(["model=faster_rcnn", "backbone=resnet50_c4"]), ShapeSpec(channels=3))
    got = {f"backbone.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected


def test_deformable_stages_use_deform_blocks() -> None:
    cfg = _cfg(
        f"model.resnets.out_features={ALL}",
        "model.resnets.deform_on_per_stage=[false,false,true,true]",
        "model.resnets.deform_modulated=true",
        "model.resnets.deform_num_groups=2",
    )
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert all(type(b).__name__ == "BottleneckBlock" for b in [*model.res2, *model.res3])
    assert all(type(b).__name__ == "DeformBottleneckBlock" for b in [*model.res4, *model.res5])
    block = model.res4[0]
    # modulated: (dy, dx, mask) per tap of the 3x3 kernel, for each of the 2 offset groups
    assert block.conv2_offset.weight.shape == (3 * 9 * 2, 256, 3, 3)
    # stride_in_1x1 (the default): the 1x1 conv downsamples, the offsets are predicted at the 3x3 conv's stride
    assert block.conv1.stride == (2, 2) and block.conv2_offset.stride == block.conv2.stride == (1, 1)
    assert block.conv2.deformable_groups == 2 and block.conv2.bias is None
    out = model(torch.zeros(1, 3, 64, 64))
    assert out["res5"].shape == (1, 2048, 2, 2)
