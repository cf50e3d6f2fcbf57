"""ASPP and DepthwiseSeparableConv2d (detectron2's layers/aspp.py and layers/blocks.py), and the remaining
layers/wrappers.py names."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from detlightning.layers import ASPP, DepthwiseSeparableConv2d
from detlightning.layers.wrappers import _NewEmptyTensorOp, check_if_dynamo_compiling, disable_torch_compiler


def _aspp(**kwargs) -> ASPP:
    torch.manual_seed(0)
    args = {"norm": "", "activation": torch.nn.ReLU()} | kwargs
    return ASPP(6, 4, [1, 2, 3], **args).eval()


def test_aspp_output_shape_and_checkpoint_keys() -> None:
    aspp = _aspp(norm="BN")
    x = torch.randn(2, 6, 9, 7)
    assert aspp(x).shape == (2, 4, 9, 7)
    keys = set(aspp.state_dict())
    bn = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    expected = {f"convs.{i}.weight" for i in range(4)} | {f"convs.{i}.norm.{k}" for i in range(4) for k in bn}
    expected |= {"convs.4.1.weight", "convs.4.1.bias", "project.weight"} | {f"project.norm.{k}" for k in bn}
    assert keys == expected  # with a norm, only the pooling branch's conv has a bias
    for i, d in enumerate([1, 2, 3], start=1):
        assert aspp.convs[i].dilation == (d, d) and aspp.convs[i].padding == (d, d)
    assert aspp.project.weight.shape == (4, 20, 1, 1)


def test_aspp_image_pooling_branch() -> None:
    x = torch.randn(2, 6, 8, 12)
    global_pool = _aspp()
    pooled = global_pool.convs[4](x)
    assert pooled.shape == (2, 4, 1, 1)
    # the branch is a 1x1 conv (+ReLU) of the per-channel image mean
    conv = global_pool.convs[4][1]
    expected = F.relu(F.conv2d(x.mean(dim=(2, 3), keepdim=True), conv.weight, conv.bias))
    torch.testing.assert_close(pooled, expected)

    # a stride-1 pooling window as large as the input is the global mean again
    full_window = _aspp(pool_kernel_size=(8, 12))
    full_window.load_state_dict(global_pool.state_dict())
    torch.testing.assert_close(full_window(x), global_pool(x))
    # a smaller window sees only part of the image: a different (position-dependent) result
    half_window = _aspp(pool_kernel_size=(4, 6))
    half_window.load_state_dict(global_pool.state_dict())
    assert half_window(x).shape == (2, 4, 8, 12)
    assert not torch.allclose(half_window(x), global_pool(x))
    with pytest.raises(ValueError, match="not divisible by pool_kernel_size"):
        half_window(torch.randn(1, 6, 9, 12))


def test_aspp_dropout_only_in_training_and_depthwise_variant() -> None:
    x = torch.randn(1, 6, 8, 8)
    aspp = _aspp(dropout=0.5)
    torch.testing.assert_close(aspp(x), aspp(x))
    aspp.train()
    torch.manual_seed(1)
    out = aspp(x)
    assert (out == 0).float().mean() > 0.3  # about half the activations dropped
    with pytest.raises(ValueError, match="3 dilations"):
        ASPP(6, 4, [1, 2], norm="", activation=None)

    sep = _aspp(norm="", use_depthwise_separable_conv=True)
    assert sep.convs[2].depthwise.weight.shape == (6, 1, 3, 3)
    assert sep.convs[2].depthwise.dilation == (2, 2)
    assert sep.convs[2].pointwise.weight.shape == (4, 6, 1, 1)
    assert sep(x).shape == (1, 4, 8, 8)


def test_depthwise_separable_conv2d_matches_grouped_then_pointwise_conv() -> None:
    torch.manual_seed(0)
    block = DepthwiseSeparableConv2d(3, 5, kernel_size=5, padding=4, dilation=2, activation1=F.relu)
    assert block.depthwise.groups == 3 and block.depthwise.bias is not None and block.pointwise.bias is not None
    x = torch.randn(2, 3, 10, 11)
    dw = F.relu(F.conv2d(x, block.depthwise.weight, block.depthwise.bias, padding=4, dilation=2, groups=3))
    expected = F.conv2d(dw, block.pointwise.weight, block.pointwise.bias)
    torch.testing.assert_close(block(x), expected)
    # with norms, the convs lose their biases and gain ``norm`` submodules (detectron2's checkpoint keys)
    normed = DepthwiseSeparableConv2d(3, 5, norm1="BN", norm2="BN")
    keys = set(normed.state_dict())
    assert {"depthwise.weight", "depthwise.norm.weight", "pointwise.weight", "pointwise.norm.running_var"} <= keys
    assert "depthwise.bias" not in keys and "pointwise.bias" not in keys


def test_wrappers_names() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    y = _NewEmptyTensorOp.apply(x, [0, 3, 4])
    assert y.shape == (0, 3, 4)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 3)
    assert check_if_dynamo_compiling() is False

    calls = []

    @disable_torch_compiler
    def double(t: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return t * 2

    torch.testing.assert_close(double(torch.ones(2)), torch.full((2,), 2.0))
    assert double.__name__ == "double" and calls == [False]
