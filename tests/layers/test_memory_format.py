"""The CPU layout helpers: values never change, only memory order; the blocked NHWC -> NCHW copy is exact."""
from __future__ import annotations

import pytest
import torch

from detlightning.layers import cpu_channels_last, nchw_for_pooling
from detlightning.layers.memory_format import nchw_contiguous


def test_cpu_channels_last_changes_memory_not_values():
    x = torch.randn(2, 5, 7, 9)
    y = cpu_channels_last(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, x)
    v = torch.randn(3, 4)
    assert cpu_channels_last(v) is v  # only 4-d tensors


@pytest.mark.parametrize("shape", [(1, 256, 37, 41), (2, 3, 5, 7), (1, 8, 1, 1), (2, 16, 40, 30)])
def test_nchw_contiguous_is_an_exact_copy(shape):
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    y = nchw_contiguous(x)
    assert y.is_contiguous() and y.shape == x.shape and torch.equal(y, x)
    # 37 * 41 pixels: not a multiple of the 512-pixel block, the last block is partial
    plain = torch.randn(shape)
    assert nchw_contiguous(plain) is plain


def test_nchw_contiguous_keeps_autograd():
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = nchw_contiguous(x)
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    assert torch.equal(x.grad, torch.arange(y.numel(), dtype=torch.float).view_as(y))


def test_nchw_for_pooling_converts_the_named_maps_only():
    feats = {k: torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last) for k in ("p2", "p3", "p6")}
    out = nchw_for_pooling(feats, ["p2", "p3", "p3"])
    assert out["p2"].is_contiguous() and out["p3"].is_contiguous()
    assert out["p6"] is feats["p6"]
    assert all(torch.equal(out[k], feats[k]) for k in feats)
    assert not feats["p2"].is_contiguous()  # the caller's dict is not modified
