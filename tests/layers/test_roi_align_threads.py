"""ROIAlign spread over threads on the CPU returns exactly what torchvision's single-threaded kernel returns."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from detlightning.layers import ROIAlign
from detlightning.layers.roi_align import can_pool_in_threads
from detlightning.modeling.poolers import ROIPooler
from detlightning.structures import Boxes


def _boxes(n: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = 1 + torch.rand(n, 2, generator=g) * size * 0.5
    return torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2)])
def test_threaded_roi_align_is_bit_identical(two_threads, aligned, sampling_ratio):
    features = torch.randn(2, 16, 40, 48).contiguous(memory_format=torch.channels_last)
    boxes = _boxes(150, 190.0, seed=1)
    rois = torch.cat([torch.randint(0, 2, (150, 1), generator=torch.Generator().manual_seed(2)).float(), boxes], 1)
    assert can_pool_in_threads(features, len(rois))
    ours = ROIAlign((7, 7), 0.25, sampling_ratio, aligned)(features, rois)
    reference = roi_align(features.contiguous(), rois, (7, 7), 0.25, sampling_ratio, aligned)
    assert ours.shape == reference.shape and torch.equal(ours, reference)


def test_threaded_pyramid_pooling_is_bit_identical(two_threads):
    torch.manual_seed(0)
    sizes = [(64, 80), (32, 40), (16, 20), (8, 10)]
    features = [torch.randn(2, 8, h, w).contiguous(memory_format=torch.channels_last) for h, w in sizes]
    pooler = ROIPooler((7, 7), scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlignV2")
    box_lists = [Boxes(_boxes(120, 256.0, seed=3)), Boxes(_boxes(90, 256.0, seed=4))]
    assert pooler._all_levels_in_threads(features, 210)
    ours = pooler(features, box_lists)
    # the reference: the same pooler, one level after the other in this thread (as before threading)
    with torch.enable_grad():
        reference = pooler([f.contiguous().requires_grad_() for f in features], box_lists)
    assert torch.equal(ours, reference.detach())


def test_no_threads_under_autograd_one_thread_or_few_rois(two_threads):
    features = torch.randn(1, 4, 16, 16)
    assert can_pool_in_threads(features, 64)
    assert not can_pool_in_threads(features, 8)  # too few rois to be worth it
    assert not can_pool_in_threads(features.requires_grad_(), 64)
    torch.set_num_threads(1)
    assert not can_pool_in_threads(torch.randn(1, 4, 16, 16), 64)
    # and gradients still flow through the single-threaded path
    feats = torch.randn(1, 4, 16, 16, requires_grad=True)
    rois = torch.cat([torch.zeros(64, 1), _boxes(64, 60.0, seed=5)], 1)
    ROIAlign((2, 2), 0.25, 0, True)(feats, rois).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
