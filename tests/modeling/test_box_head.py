"""FastRCNNConvFCHead: shapes, parameter names, the computation, and building from the config."""
from __future__ import annotations

import pytest
import torch

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.roi_heads.box_head import FastRCNNConvFCHead, build_box_head


def test_fc_head_shapes_and_names():
    head = FastRCNNConvFCHead(ShapeSpec(channels=8, height=7, width=7), conv_dims=[], fc_dims=[32, 16])
    assert head(torch.randn(5, 8, 7, 7)).shape == (5, 16)
    assert head.output_shape == ShapeSpec(channels=16)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "fc1.weight": (32, 8 * 7 * 7),
        "fc1.bias": (32,),
        "fc2.weight": (16, 32),
        "fc2.bias": (16,),
    }


def test_conv_gn_head_names_and_no_bias():
    head = FastRCNNConvFCHead(
        ShapeSpec(channels=32, height=5, width=5), conv_dims=[32, 32, 32, 32], fc_dims=[24], conv_norm="GN"
    )
    keys = set(head.state_dict())
    for i in range(1, 5):
        assert {f"conv{i}.weight", f"conv{i}.norm.weight", f"conv{i}.norm.bias"} <= keys
        assert f"conv{i}.bias" not in keys  # a norm follows, so the conv has no bias
    assert head.fc1.in_features == 32 * 5 * 5
    assert head(torch.randn(3, 32, 5, 5)).shape == (3, 24)
    assert isinstance(head.conv1.norm, torch.nn.GroupNorm) and head.conv1.norm.num_groups == 32


def test_conv_only_head_keeps_spatial_shape():
    head = FastRCNNConvFCHead(ShapeSpec(channels=4, height=6, width=6), conv_dims=[8], fc_dims=[])
    assert head.output_shape == ShapeSpec(channels=8, height=6, width=6)
    out = head(torch.randn(2, 4, 6, 6))
    assert out.shape == (2, 8, 6, 6) and (out >= 0).all()  # ReLU after the conv


def test_fc_head_computes_relu_linear():
    head = FastRCNNConvFCHead(ShapeSpec(channels=2, height=2, width=2), conv_dims=[], fc_dims=[3])
    w = torch.arange(24, dtype=torch.float32).view(3, 8) / 10 - 1.0
    b = torch.tensor([0.5, -20.0, 0.0])
    with torch.no_grad():
        head.fc1.weight.copy_(w)
        head.fc1.bias.copy_(b)
    x = torch.arange(16, dtype=torch.float32).view(2, 2, 2, 2) / 7
    flat = x.reshape(2, 8).numpy()
    expected = (flat @ w.numpy().T + b.numpy()).clip(min=0)  # numpy reference: relu(x W^T + b)
    assert torch.allclose(head(x), torch.from_numpy(expected), atol=1e-5)
    assert (head(x)[:, 1] == 0).all()


def test_head_needs_a_layer():
    with pytest.raises(ValueError, match="at least one"):
        FastRCNNConvFCHead(ShapeSpec(channels=4, height=7, width=7), conv_dims=[], fc_dims=[])


def test_build_box_head_from_config():
    cfg = compose(["model=mask_rcnn", "backbone=resnet50", "model.roi_box_head.fc_dim=32"])
    head = build_box_head(cfg, ShapeSpec(channels=16, height=7, width=7))
    assert isinstance(head, FastRCNNConvFCHead)
    assert head.fc1.weight.shape == (32, 16 * 7 * 7) and head.fc2.weight.shape == (32, 32)
    assert head.output_shape.channels == 32

    # the GN "4conv1fc" variant of Misc/mask_rcnn_R_50_FPN_3x_gn
    cfg = compose(
        [
            "model=mask_rcnn",
            "backbone=resnet50",
            "model.roi_box_head.num_conv=4",
            "model.roi_box_head.num_fc=1",
            "model.roi_box_head.conv_dim=32",
            "model.roi_box_head.fc_dim=16",
            "model.roi_box_head.norm=GN",
        ]
    )
    head = build_box_head(cfg, ShapeSpec(channels=32, height=7, width=7))
    assert [n for n, _ in head.named_children()] == [
        "conv1", "conv2", "conv3", "conv4", "flatten", "fc1", "fc_relu1"
    ]
