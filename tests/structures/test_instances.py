from __future__ import annotations

import copy
import pickle

import pytest
import torch

from detlightning.structures import Boxes, Instances


def _make(n: int = 3, offset: float = 0.0) -> Instances:
    boxes = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) + offset
    return Instances(
        (20, 30),
        pred_boxes=Boxes(boxes),
        scores=torch.linspace(0.1, 0.9, n),
        labels=[f"obj{i}" for i in range(n)],
    )


def test_fields_set_get_has_remove():
    inst = Instances((10, 12))
    assert inst.image_size == (10, 12)
    inst.scores = torch.tensor([0.5, 0.7])
    inst.set("pred_classes", torch.tensor([1, 2]))
    assert inst.has("scores") and "pred_classes" in inst and not inst.has("missing")
    assert torch.equal(inst.get("pred_classes"), torch.tensor([1, 2]))
    assert set(inst.get_fields()) == {"scores", "pred_classes"}
    assert len(inst) == 2
    inst.remove("scores")
    assert not inst.has("scores")
    with pytest.raises(AttributeError, match="scores"):
        _ = inst.scores
    with pytest.raises(KeyError, match="scores"):
        inst.get("scores")


def test_length_mismatch_names_field_and_lengths():
    inst = Instances((10, 10), scores=torch.zeros(3))
    with pytest.raises(ValueError, match=r"length 2 .* length 3 .*'pred_classes'"):
        inst.pred_classes = torch.zeros(2)


def test_empty_instances_len_raises():
    with pytest.raises(NotImplementedError, match="Empty Instances"):
        len(Instances((4, 4)))
    assert "num_instances=0" in repr(Instances((4, 4)))


def test_int_index_keeps_one_element_fields():
    inst = _make(3)
    one = inst[1]
    assert isinstance(one, Instances) and len(one) == 1
    assert isinstance(one.pred_boxes, Boxes) and one.pred_boxes.tensor.tolist() == [[4.0, 5.0, 6.0, 7.0]]
    assert one.scores.shape == (1,) and one.scores.item() == pytest.approx(0.5)
    assert one.labels == ["obj1"]
    assert inst[-1].labels == ["obj2"]
    with pytest.raises(IndexError):
        inst[3]
    with pytest.raises(IndexError):
        inst[-4]


def test_mask_slice_and_index_tensor():
    inst = _make(4)
    del inst.get_fields()["labels"]  # a list field cannot take tensor indices (as in detectron2)
    sel = inst[inst.scores > 0.5]
    assert len(sel) == 2
    assert torch.allclose(sel.scores, inst.scores[2:])
    assert torch.equal(inst[1:3].pred_boxes.tensor, inst.pred_boxes.tensor[1:3])
    assert _make(4)[1:3].labels == ["obj1", "obj2"]
    out = inst[torch.tensor([3, 0])]
    assert torch.equal(out.pred_boxes.tensor, inst.pred_boxes.tensor[[3, 0]])
    assert out.image_size == (20, 30)


def test_cat_tensors_lists_and_cat_types():
    a, b = _make(2), _make(3, offset=100.0)
    c = Instances.cat([a, b])
    assert len(c) == 5
    assert torch.equal(c.pred_boxes.tensor, torch.cat([a.pred_boxes.tensor, b.pred_boxes.tensor]))
    assert torch.equal(c.scores, torch.cat([a.scores, b.scores]))
    assert c.labels == ["obj0", "obj1", "obj0", "obj1", "obj2"]
    assert Instances.cat([a]) is a


def test_cat_errors():
    a = _make(2)
    other = Instances((5, 5), scores=torch.zeros(2))
    with pytest.raises(ValueError, match="image sizes differ"):
        Instances.cat([a, other])
    with pytest.raises(ValueError, match="non-empty"):
        Instances.cat([])
    weird = Instances((1, 1), thing="ab")  # a str has a length but no way to concatenate
    with pytest.raises(ValueError, match="Unsupported type"):
        Instances.cat([weird, weird])


def test_to_moves_fields_with_to_only():
    inst = _make(2)
    inst.ids = torch.tensor([1, 2])
    out = inst.to(torch.float64)
    assert out.scores.dtype == torch.float64
    assert out.ids.dtype == torch.float64
    assert out.pred_boxes.tensor.dtype == torch.float32  # Boxes stay float32
    assert out.labels is inst.labels  # plain lists are carried as they are
    assert out.to("cpu").scores.device == torch.device("cpu")
    assert out.image_size == inst.image_size


def test_repr_and_copy_pickle_round_trip():
    inst = _make(2)
    r = repr(inst)
    assert "num_instances=2" in r and "image_height=20" in r and "image_width=30" in r and "scores" in r
    for clone in (copy.deepcopy(inst), pickle.loads(pickle.dumps(inst))):
        assert torch.equal(clone.scores, inst.scores) and clone.labels == inst.labels
    with pytest.raises(NotImplementedError):
        iter(inst)
