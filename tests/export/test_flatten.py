"""flatten_to_tuple / schemas / TracingAdapter on small hand-made structures and a toy traced module."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detlightning.export import TracingAdapter, flatten_to_tuple, patch_builtin_len
from detlightning.export.flatten import (
    DictSchema,
    InstancesSchema,
    ListSchema,
    TensorWrapSchema,
    flat_names,
    schema_from_dict,
    schema_to_dict,
)
from detlightning.structures import Boxes, Instances, Keypoints, ROIMasks


def _instances() -> Instances:
    g = torch.Generator().manual_seed(0)
    return Instances(
        (20, 30),
        scores=torch.rand(3, generator=g),
        pred_boxes=Boxes(torch.rand(3, 4, generator=g) * 10),
        pred_masks=ROIMasks(torch.rand(3, 7, 7, generator=g)),
        pred_keypoints=Keypoints(torch.rand(3, 2, 3, generator=g)),
    )


def test_flatten_and_rebuild_nested_structure():
    inst = _instances()
    t = torch.arange(4.0)
    obj = [{"z": t, "a": inst}, ("name", t * 2)]
    values, schema = flatten_to_tuple(obj)
    # dict keys sorted ("a" before "z"), Instances fields sorted, the image size last
    assert values[0] is inst.pred_boxes.tensor
    assert values[1] is inst.pred_keypoints.tensor
    assert values[2] is inst.pred_masks.tensor
    assert values[3] is inst.scores
    assert values[4].tolist() == [20, 30]
    assert values[5] is t and values[6] == "name" and len(values) == 8

    rebuilt = schema(values)
    assert isinstance(rebuilt, list) and isinstance(rebuilt[1], tuple)
    r = rebuilt[0]["a"]
    assert isinstance(r, Instances) and r.image_size.tolist() == [20, 30]
    assert isinstance(r.pred_boxes, Boxes) and isinstance(r.pred_masks, ROIMasks)
    assert isinstance(r.pred_keypoints, Keypoints)
    assert torch.equal(r.pred_boxes.tensor, inst.pred_boxes.tensor) and torch.equal(r.scores, inst.scores)
    assert torch.equal(rebuilt[0]["z"], t) and rebuilt[1][0] == "name"


def test_schema_serialises_to_json_and_back():
    _, schema = flatten_to_tuple([_instances(), {"x": torch.zeros(1)}])
    restored = schema_from_dict(json.loads(json.dumps(schema_to_dict(schema))))
    assert restored == schema
    assert isinstance(restored, ListSchema) and isinstance(restored.schemas[0], InstancesSchema)
    assert isinstance(restored.schemas[0].schemas[0], TensorWrapSchema)
    assert restored.schemas[0].schemas[0].class_name.endswith(".Boxes")
    with pytest.raises(ValueError, match="kind"):
        schema_from_dict({"kind": "os.system"})


def test_flat_names_follow_the_layout():
    values, schema = flatten_to_tuple([Instances((2, 2), scores=torch.zeros(1), pred_boxes=Boxes(torch.zeros(1, 4)))])
    names = flat_names(schema)
    assert names == ["0.pred_boxes", "0.scores", "0.image_size"]
    assert len(names) == len(values)


def test_bad_structures_are_refused():
    with pytest.raises(KeyError, match="str keys"):
        flatten_to_tuple({1: torch.zeros(1)})
    _, schema = flatten_to_tuple([torch.zeros(1), torch.zeros(1)])
    with pytest.raises(ValueError, match="expected 2"):
        schema((torch.zeros(1),))
    assert isinstance(flatten_to_tuple({"a": 1})[1], DictSchema)


class _Thresholder(nn.Module):
    """Per image: one box per pixel above 0.5 (a data-dependent number of outputs), via Instances/Boxes."""

    def forward(self, batched_inputs: list[dict]) -> list[Instances]:
        out = []
        for x in batched_inputs:
            img = x["image"]
            values = img.flatten()
            keep = values > 0.5
            v = values[keep] * self.scale(img)
            boxes = torch.stack([v, v, v + 1, v + 2], dim=1)
            out.append(Instances(img.shape[-2:], pred_boxes=Boxes(boxes), scores=v))
        return out

    @staticmethod
    def scale(img: torch.Tensor) -> torch.Tensor:
        # depends on the image size, so a size frozen into the trace would show
        return img.new_tensor(1.0) * img.shape[-1]


def test_tracing_adapter_generalises_to_other_sizes_and_counts():
    g = torch.Generator().manual_seed(0)
    model = _Thresholder().eval()
    inputs = [{"image": torch.rand(4, 5, generator=g)}]
    adapter = TracingAdapter(model, inputs)
    assert len(adapter.flattened_inputs) == 1
    assert not adapter.training, "the adapter follows the model's mode (exporters restore the adapter's mode)"
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    for image in (inputs[0]["image"], torch.rand(7, 3, generator=g)):
        new = [{"image": image}]
        eager = model(new)[0]
        rebuilt = adapter.outputs_schema(traced(*adapter.flatten_inputs(new)))[0]
        assert len(rebuilt) == len(eager) > 0
        assert torch.equal(rebuilt.pred_boxes.tensor, eager.pred_boxes.tensor)
        assert rebuilt.image_size.tolist() == list(image.shape)


def test_tracing_adapter_non_tensor_inputs():
    model = _Thresholder()
    inputs = [{"image": torch.rand(3, 3), "height": 6}]
    with pytest.raises(ValueError, match="tensors only"):
        TracingAdapter(model, inputs)
    adapter = TracingAdapter(model, inputs, inference_func=lambda m, x: m(x)[0].scores, allow_non_tensor=True)
    assert adapter.inputs_schema is None and len(adapter.flattened_inputs) == 1
    assert torch.equal(adapter(*adapter.flattened_inputs)[0], model(inputs)[0].scores)
    with pytest.raises(ValueError, match="only run on its own"):
        adapter(torch.rand(3, 3))


def test_patch_builtin_len_is_scoped():
    from detlightning.modeling.roi_heads import fast_rcnn

    assert "len" not in vars(fast_rcnn)
    with patch_builtin_len():
        assert "len" in vars(fast_rcnn)
        assert fast_rcnn.len([1, 2, 3]) == 3
        assert fast_rcnn.len(torch.zeros(5, 2)) == 5
    assert "len" not in vars(fast_rcnn)
