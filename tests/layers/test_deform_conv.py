"""DeformConv / ModulatedDeformConv and the ResNet DeformBottleneckBlock against plain convolutions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detlightning.layers import DeformConv, ModulatedDeformConv
from detlightning.modeling.backbone.resnet import BottleneckBlock, DeformBottleneckBlock


def _input(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("groups", [1, 2])
def test_zero_offsets_give_the_ordinary_convolution(groups: int) -> None:
    conv = DeformConv(4, 6, 3, stride=2, padding=2, dilation=2, groups=groups)
    x = _input(2, 4, 9, 11)
    expected = F.conv2d(x, conv.weight, None, stride=2, padding=2, dilation=2, groups=groups)
    offset = torch.zeros(2, 18, *expected.shape[-2:])
    torch.testing.assert_close(conv(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_a_whole_pixel_offset_samples_the_shifted_input() -> None:
    conv = DeformConv(3, 5, 3, padding=1)
    x = _input(1, 3, 8, 8)
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 1::2] = 1.0  # every tap looks one pixel to the right (dx = +1)
    out = conv(x, offset)
    # zero-pad as the convolution does, then drop the first column: each tap reads one pixel further right
    shifted = F.pad(x, (1, 2, 1, 1))[..., 1:]
    expected = F.conv2d(shifted, conv.weight, None)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_modulated_mask_scales_every_tap_and_bias_is_added() -> None:
    conv = ModulatedDeformConv(4, 4, 3, padding=1)
    assert conv.bias is not None  # a bias by default, as in detectron2
    with torch.no_grad():
        conv.bias.copy_(torch.arange(4.0))
    x = _input(1, 4, 6, 7)
    offset = torch.zeros(1, 18, 6, 7)
    plain = F.conv2d(x, conv.weight, None, padding=1)
    full = conv(x, offset, torch.ones(1, 9, 6, 7))
    half = conv(x, offset, torch.full((1, 9, 6, 7), 0.5))
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(full, plain + bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(half, 0.5 * plain + bias, rtol=1e-5, atol=1e-5)


def test_empty_batch_gives_empty_output_of_the_right_shape() -> None:
    conv = DeformConv(2, 3, 3, stride=2, padding=1)
    out = conv(torch.zeros(0, 2, 10, 10), torch.zeros(0, 18, 5, 5))
    assert out.shape == (0, 3, 5, 5)


def test_channels_must_divide_by_groups() -> None:
    with pytest.raises(ValueError, match="groups=3"):
        DeformConv(4, 6, 3, groups=3)


@pytest.mark.parametrize("modulated", [False, True])
def test_fresh_deform_block_equals_the_plain_bottleneck(modulated: bool) -> None:
    """conv2_offset starts at zero, so a new block computes what a BottleneckBlock with its weights computes."""
    kwargs = dict(bottleneck_channels=8, stride=2, num_groups=2, norm="", stride_in_1x1=False, dilation=1)
    deform = DeformBottleneckBlock(16, 32, deform_modulated=modulated, **kwargs).eval()
    plain = BottleneckBlock(16, 32, **kwargs).eval()
    assert deform.conv2_offset.out_channels == (27 if modulated else 18)
    state = {k: v for k, v in deform.state_dict().items() if not k.startswith("conv2_offset.")}
    plain.load_state_dict(state)
    x = _input(2, 16, 12, 12)
    with torch.no_grad():
        expected = plain(x)
        if modulated:  # zero mask logits -> every tap weighted sigmoid(0) = 0.5 (see the test above)
            deform.conv2.weight.mul_(2.0)
        torch.testing.assert_close(deform(x), expected, rtol=1e-4, atol=1e-5)
