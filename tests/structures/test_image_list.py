from __future__ import annotations

import pytest
import torch

from detlightning.structures import ImageList


def _imgs():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 5, 7, generator=g), torch.rand(3, 9, 4, generator=g)]


def test_pads_to_max_size_and_preserves_values():
    imgs = _imgs()
    il = ImageList.from_tensors(imgs, pad_value=-1.0)
    assert il.tensor.shape == (2, 3, 9, 7)
    assert il.image_sizes == [(5, 7), (9, 4)]
    assert len(il) == 2
    assert torch.equal(il.tensor[0, :, :5, :7], imgs[0])
    assert torch.equal(il.tensor[1, :, :9, :4], imgs[1])
    assert (il.tensor[0, :, 5:, :] == -1).all() and (il.tensor[1, :, :, 4:] == -1).all()
    assert torch.equal(il[0], imgs[0]) and torch.equal(il[1], imgs[1])


def test_size_divisibility_rounds_up():
    il = ImageList.from_tensors(_imgs(), size_divisibility=4)
    assert il.tensor.shape == (2, 3, 12, 8)
    il = ImageList.from_tensors([torch.zeros(3, 32, 64)], size_divisibility=32)
    assert il.tensor.shape == (1, 3, 32, 64)  # already divisible: unchanged
    il = ImageList.from_tensors([torch.zeros(3, 33, 65)], size_divisibility=32)
    assert il.tensor.shape == (1, 3, 64, 96)


def test_padding_constraints_square_and_divisibility_override():
    il = ImageList.from_tensors(_imgs(), padding_constraints={"square_size": 16})
    assert il.tensor.shape == (2, 3, 16, 16)
    il = ImageList.from_tensors(_imgs(), size_divisibility=32, padding_constraints={"size_divisibility": 5})
    assert il.tensor.shape == (2, 3, 10, 10)
    il = ImageList.from_tensors(_imgs(), padding_constraints={"square_size": 14, "size_divisibility": 8})
    assert il.tensor.shape == (2, 3, 16, 16)
    il = ImageList.from_tensors(_imgs(), size_divisibility=4, padding_constraints={})
    assert il.tensor.shape == (2, 3, 12, 8)
    with pytest.raises(ValueError, match="square_size=8"):
        ImageList.from_tensors(_imgs(), padding_constraints={"square_size": 8})


def test_single_image_path_matches_batched_path():
    img = torch.rand(3, 6, 5)
    single = ImageList.from_tensors([img], size_divisibility=4, pad_value=2.0)
    assert single.tensor.shape == (1, 3, 8, 8)
    batched = ImageList.from_tensors([img, torch.zeros(3, 2, 2)], size_divisibility=4, pad_value=2.0)
    assert torch.equal(single.tensor[0], batched.tensor[0])


def test_two_dim_images_and_leading_dims():
    il = ImageList.from_tensors([torch.ones(2, 3), torch.ones(4, 1)])
    assert il.tensor.shape == (2, 4, 3)
    assert il.tensor.sum().item() == 6 + 4
    il = ImageList.from_tensors([torch.ones(2, 3, 4, 5)] * 2)
    assert il.tensor.shape == (2, 2, 3, 4, 5)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        ImageList.from_tensors([])
    with pytest.raises(TypeError, match="list or tuple"):
        ImageList.from_tensors(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="element 1"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), [1, 2]])
    with pytest.raises(ValueError, match="leading dims"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        ImageList.from_tensors([torch.zeros(4)])
    with pytest.raises(ValueError, match="2 image sizes"):
        ImageList(torch.zeros(3, 3, 4, 4), [(4, 4), (4, 4)])


def test_to_and_device():
    il = ImageList.from_tensors(_imgs())
    half = il.to(torch.float16)
    assert half.tensor.dtype == torch.float16 and half.image_sizes == il.image_sizes
    assert il.device == torch.device("cpu")
    assert il.to("cpu").device == torch.device("cpu")
