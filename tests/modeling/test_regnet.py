"""RegNet / AnyNet: stage parameters, shapes/strides/out_features, freezing, block variants, checkpoint key names."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detlightning.layers import FrozenBatchNorm2d, ShapeSpec
from detlightning.modeling import RegNet as RegNetFromModeling
from detlightning.modeling.backbone import Backbone, RegNet
from detlightning.modeling.backbone.regnet import (
    SE,
    AnyNet,
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
    adjust_block_compatibility,
    generate_regnet_parameters,
)

# continuous widths 16, 24, ..., 56 snap to 16 * 2**k: [16, 32, 32, 32, 64, 64] -> stages of depth 1, 3, 2
TINY = dict(depth=6, w_a=8.0, w_0=16, w_m=2.0, group_width=8)


def _tiny(**kwargs) -> RegNet:
    args = dict(stem_class=SimpleStem, stem_width=8, block_class=ResBottleneckBlock, **TINY)
    args.update(kwargs)
    return RegNet(**args)


def test_generate_regnet_parameters() -> None:
    ws, ds, num_stages, total_stages, ws_all, ws_cont = generate_regnet_parameters(8.0, 16, 2.0, 6)
    assert (ws, ds, num_stages, total_stages) == ([16, 32, 64], [1, 3, 2], 3, 3)
    assert ws_all == [16, 32, 32, 32, 64, 64] and ws_cont == [16, 24, 32, 40, 48, 56]
    # RegNetY-4GF and RegNetX-4GF of the DDS paper (detectron2's mask_rcnn_regnet{y,x}_4gf_dds configs)
    # then rounded to multiples of the group width (64 / 40)
    ws, ds = generate_regnet_parameters(31.41, 96, 2.24, 22)[:2]
    assert (ws, ds) == ([96, 216, 480, 1080], [2, 6, 12, 2])
    assert adjust_block_compatibility(ws, [1.0] * 4, [64] * 4)[0] == [128, 192, 512, 1088]
    ws, ds = generate_regnet_parameters(38.65, 96, 2.43, 23)[:2]
    assert ds == [2, 5, 14, 2]
    assert adjust_block_compatibility(ws, [1.0] * 4, [40] * 4)[0] == [80, 240, 560, 1360]
    with pytest.raises(ValueError):
        generate_regnet_parameters(8.0, 12, 2.0, 6)  # w_0 not a multiple of 8


def test_adjust_block_compatibility() -> None:
    # the group width is capped by the bottleneck width; widths round to multiples of the group width
    assert adjust_block_compatibility([90, 24], [1.0, 1.0], [64, 64]) == ([64, 24], [1.0, 1.0], [64, 24])
    assert adjust_block_compatibility([96], [2.0], [16]) == ([96], [2.0], [16])


def test_shapes_strides_and_out_features() -> None:
    model = _tiny(out_features=["stem", "s1", "s2", "s3"]).eval()
    assert isinstance(model, Backbone) and RegNetFromModeling is RegNet
    assert model.output_shape() == {
        "stem": ShapeSpec(channels=8, stride=2),
        "s1": ShapeSpec(channels=16, stride=4),
        "s2": ShapeSpec(channels=32, stride=8),
        "s3": ShapeSpec(channels=64, stride=16),
    }
    assert [len(list(stage.children())) for stage, _ in model.stages_and_names] == [1, 3, 2]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48))
    assert list(out) == ["stem", "s1", "s2", "s3"]
    for name, spec in model.output_shape().items():
        assert out[name].shape == (2, spec.channels, 64 // spec.stride, 48 // spec.stride)

    last_only = _tiny()
    assert list(last_only.output_shape()) == ["s3"]
    with pytest.raises(ValueError, match="s4"):
        _tiny(out_features=["s4"])
    with pytest.raises(ValueError):
        last_only(torch.randn(3, 32, 32))


def test_state_dict_keys_follow_detectron2() -> None:
    keys = set(_tiny(se_ratio=0.25).state_dict())
    for key in [
        "stem.conv.weight",
        "stem.bn.running_var",
        "s1.b1.proj.weight",
        "s1.b1.bn.weight",
        "s1.b1.f.a.weight",
        "s1.b1.f.a_bn.weight",
        "s1.b1.f.b.weight",
        "s1.b1.f.b_bn.num_batches_tracked",
        "s1.b1.f.se.f_ex.0.weight",
        "s1.b1.f.se.f_ex.2.bias",
        "s1.b1.f.c.weight",
        "s1.b1.f.c_bn.bias",
        "s2.b3.f.c.weight",
    ]:
        assert key in keys, key
    # identity shortcut when neither the width nor the stride changes
    assert not any(k.startswith("s2.b2.proj") or k.startswith("s2.b2.bn") for k in keys)
    # SE width is a fraction of the block's input width; grouped 3x3 conv of group_width channels per group
    model = _tiny(se_ratio=0.25)
    assert model.s2.b1.f.se.f_ex[0].out_channels == 4 and model.s2.b2.f.se.f_ex[0].out_channels == 8
    assert model.s2.b1.f.b.groups == 32 // 8
    assert "s1.b1.f.se.f_ex.0.weight" not in _tiny().state_dict()


def test_bottleneck_block_computes_residual_with_se() -> None:
    torch.manual_seed(0)
    params = {"bot_mul": 1.0, "group_w": 4, "se_r": 0.5}
    block = ResBottleneckBlock(8, 8, 1, "BN", nn.ReLU, params).eval()
    assert block.proj is None and isinstance(block.f.se, SE)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 6, 6)
    f = block.f
    h = torch.relu(f.a_bn(f.a(x)))
    h = torch.relu(f.b_bn(f.b(h)))
    gate = torch.sigmoid(f.se.f_ex[2](torch.relu(f.se.f_ex[0](h.mean((2, 3), keepdim=True)))))
    expected = torch.relu(x + f.c_bn(f.c(h * gate)))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("block_class", [VanillaBlock, ResBasicBlock, ResBottleneckBlock])
def test_block_variants_and_res_stem(block_class) -> None:
    model = AnyNet(
        stem_class=ResStem,
        stem_width=8,
        block_class=block_class,
        depths=[1, 2],
        widths=[8, 16],
        group_widths=[4, 4],
        strides=[1, 2],
        bottleneck_ratios=[1.0, 1.0],
        se_ratio=0.0,
        activation_class=nn.ReLU,
        out_features=["s1", "s2"],
    )
    assert model.output_shape() == {"s1": ShapeSpec(channels=8, stride=4), "s2": ShapeSpec(channels=16, stride=8)}
    out = model(torch.randn(2, 3, 32, 32))
    assert out["s1"].shape == (2, 8, 8, 8) and out["s2"].shape == (2, 16, 4, 4)
    out["s2"].sum().backward()
    assert model.stem.conv.weight.grad is not None


def test_freeze() -> None:
    model = _tiny(freeze_at=2, out_features=["s1", "s2", "s3"])
    frozen = [model.stem, model.s1]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
    for module in (model.s2, model.s3):
        assert all(p.requires_grad for p in module.parameters())
        assert isinstance(module.b1.f.a_bn, nn.BatchNorm2d)
    assert model.freeze(0) is model  # freeze_at=0 changes nothing
    assert all(p.requires_grad for p in _tiny(freeze_at=0).parameters())
    # frozen stem + stage still run and give gradients to the later stages
    out = model(torch.randn(1, 3, 32, 32))
    out["s3"].sum().backward()
    assert model.s2.b1.f.a.weight.grad is not None and model.s1.b1.f.a.weight.grad is None


def test_sync_bn_norm_runs_in_a_single_process() -> None:
    model = _tiny(norm="SyncBN", se_ratio=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["s3"].shape == (1, 64, 2, 2)


def test_pycls_pyth_checkpoint_loads_into_fpn_bottom_up(tmp_path) -> None:
    """The 1x RegNet configs start from pycls ImageNet ``.pyth`` files: keys without the ``backbone.bottom_up.``
    prefix, under ``model_state``, with a classifier head that has no place in the detector."""
    from detlightning.checkpoint import DetectionCheckpointer
    from detlightning.modeling.backbone import FPN

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = FPN(
                bottom_up=_tiny(se_ratio=0.25, out_features=["s1", "s2", "s3"]),
                in_features=["s1", "s2", "s3"],
                out_channels=16,
            )

    torch.manual_seed(0)
    imagenet = _tiny(se_ratio=0.25).state_dict()
    imagenet = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in imagenet.items()}
    imagenet["head.fc.weight"], imagenet["head.fc.bias"] = torch.randn(10, 64), torch.randn(10)
    torch.save({"model_state": imagenet, "epoch": 100}, tmp_path / "RegNetY.pyth")

    model = Detector()
    DetectionCheckpointer(model).load(str(tmp_path / "RegNetY.pyth"))
    loaded = model.backbone.bottom_up.state_dict()
    for key, value in imagenet.items():
        if key.startswith("head.") or key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(loaded[key], value, msg=key)
