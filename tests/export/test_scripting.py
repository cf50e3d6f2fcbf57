"""Boxes, ImageList, Instances (through scripting_with_instances), batched_nms and ROIPooler under torch.jit.script
and torch.jit.trace, and torch.export of tiny random Mask / Cascade Mask R-CNNs, against eager mode. torch.jit is
deprecated upstream: its FutureWarnings are ignored here."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from detlightning.export import export_model, load_exported_model, patch_instances, scripting_with_instances
from detlightning.layers import batched_nms
from detlightning.modeling.poolers import ROIPooler
from detlightning.structures import Boxes, ImageList, Instances
from tests.export._compare import assert_instances_close

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def _random_boxes(n: int, size: float = 60.0, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _box_ops(b: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    boxes = Boxes(b)
    boxes.clip((50, 40))
    kept = boxes[keep]
    both = Boxes(torch.cat([kept.tensor, boxes.tensor]))  # Boxes.cat: a classmethod, eager code only
    return boxes.area(), kept.tensor, both.get_centers(), boxes.nonempty(threshold=2.0)


def test_boxes_script_and_trace_match_eager() -> None:
    torch.jit.script(Boxes)  # every method compiles, Boxes.cat included
    b = _random_boxes(7)
    keep = torch.tensor([True, False, True, True, False, False, True])
    expected = _box_ops(b, keep)
    scripted = torch.jit.script(_box_ops)
    for got, want in zip(scripted(b, keep), expected):
        torch.testing.assert_close(got, want)
    traced = torch.jit.trace(_box_ops, (b, keep))
    b2, keep2 = _random_boxes(4, seed=1), torch.tensor([False, True, True, False])
    for got, want in zip(traced(b2, keep2), _box_ops(b2, keep2)):  # other inputs than the traced ones
        torch.testing.assert_close(got, want)
    # eager behaviour the scriptable signatures keep: int index -> one box, lists accepted, to() moves
    assert Boxes([[0, 0, 1, 2]])[0].tensor.shape == (1, 4)
    assert Boxes(b).to(torch.device("cpu")).tensor.dtype == torch.float32
    assert torch.equal(Boxes.cat((Boxes(b[:2]), Boxes(b[2:]))).tensor, b)


def _pad(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    batch = ImageList.from_tensors(images, 8, pad_value=-1.0)
    return batch.tensor, batch[1]


def test_image_list_script_and_trace_match_eager() -> None:
    torch.jit.script(ImageList)
    images = [torch.rand(3, 10, 13), torch.rand(3, 17, 6)]
    want_tensor, want_second = _pad(images)
    assert want_tensor.shape == (2, 3, 24, 16)
    scripted = torch.jit.script(_pad)
    got_tensor, got_second = scripted(images)
    torch.testing.assert_close(got_tensor, want_tensor)
    torch.testing.assert_close(got_second, images[1])

    def pad_traced(a: Tensor, b: Tensor) -> Tensor:
        return ImageList.from_tensors([a, b], 8).tensor

    traced = torch.jit.trace(pad_traced, (images[0], images[1]))
    other = [torch.rand(3, 21, 9), torch.rand(3, 5, 30)]
    torch.testing.assert_close(traced(*other), ImageList.from_tensors(other, 8).tensor)  # sizes not baked in


def test_batched_nms_script_and_trace_match_eager() -> None:
    boxes = _random_boxes(40, seed=2)
    scores = torch.rand(40, generator=torch.Generator().manual_seed(3))
    idxs = torch.arange(40) % 3
    want = batched_nms(boxes, scores, idxs, 0.3)
    assert 0 < len(want) < 40  # some boxes suppressed, some kept
    assert torch.equal(torch.jit.script(batched_nms)(boxes, scores, idxs, 0.3), want)
    traced = torch.jit.trace(lambda b, s, i: batched_nms(b, s, i, 0.3), (boxes, scores, idxs))
    b2, s2, i2 = boxes[:25] + 3.0, scores[:25].flip(0), idxs[:25]
    assert torch.equal(traced(b2, s2, i2), batched_nms(b2, s2, i2, 0.3))


def _pooler() -> ROIPooler:
    # stride 4 and 8 levels; boxes of side ~8 px go to level 3 (stride 8), smaller ones to level 2
    return ROIPooler((3, 2), (1 / 4, 1 / 8), 0, "ROIAlignV2", canonical_box_size=8, canonical_level=3).eval()


def test_roi_pooler_script_and_trace_match_eager() -> None:
    pooler = _pooler()
    g = torch.Generator().manual_seed(4)
    x = [torch.rand(2, 5, 16, 16, generator=g), torch.rand(2, 5, 8, 8, generator=g)]
    boxes = [Boxes(_random_boxes(3, 50.0, seed=5)), Boxes(_random_boxes(4, 50.0, seed=6))]
    want = pooler(x, boxes)
    assert want.shape == (7, 5, 3, 2)
    torch.testing.assert_close(torch.jit.script(pooler)(x, boxes), want)

    class Wrapper(nn.Module):  # tracing takes tensors: the box lists are built inside
        def __init__(self) -> None:
            super().__init__()
            self.pooler = _pooler()

        def forward(self, p2: Tensor, p3: Tensor, b0: Tensor, b1: Tensor) -> Tensor:
            return self.pooler([p2, p3], [Boxes(b0), Boxes(b1)])

    wrapper = Wrapper().eval()
    traced = torch.jit.trace(wrapper, (*x, boxes[0].tensor, boxes[1].tensor), check_trace=False)
    b0, b1 = _random_boxes(6, 50.0, seed=7), _random_boxes(2, 50.0, seed=8)
    torch.testing.assert_close(traced(*x, b0, b1), wrapper(*x, b0, b1))


class _Detect(nn.Module):
    """Builds Instances, filters them by score, and pools features for the kept boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = _pooler()

    def forward(self, x: list[Tensor], boxes: Tensor, scores: Tensor) -> tuple[Instances, Tensor]:
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(boxes)
        inst.scores = scores
        inst.pred_classes = (scores * 10).long()
        kept = inst[scores > 0.5]
        features = self.pooler(x[:1] + x[1:], [kept.pred_boxes])
        return kept, features


def test_scripting_with_instances_matches_eager() -> None:
    fields = {"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
    model = _Detect().eval()
    g = torch.Generator().manual_seed(9)
    x = [torch.rand(1, 5, 16, 16, generator=g), torch.rand(1, 5, 8, 8, generator=g)]
    boxes, scores = _random_boxes(6, 50.0, seed=10), torch.tensor([0.9, 0.2, 0.7, 0.4, 0.6, 0.1])
    want_inst, want_features = model(x, boxes, scores)
    assert len(want_inst) == 3

    scripted = scripting_with_instances(model, fields)
    assert not hasattr(Instances, "_jit_override_qualname")  # the patch is undone after scripting
    got, got_features = scripted(x, boxes, scores)
    assert len(got) == 3 and got.has("scores") and not got.has("pred_masks")
    torch.testing.assert_close(got_features, want_features)
    converted = got.to_instances()  # back to a regular Instances
    assert isinstance(converted, Instances) and converted.image_size == (64, 64)
    for name in fields:
        a, b = converted.get(name), want_inst.get(name)
        torch.testing.assert_close(getattr(a, "tensor", a), getattr(b, "tensor", b))

    with pytest.raises(ValueError, match="model.eval"):
        scripting_with_instances(_Detect().train(), fields)


def test_patch_instances_class_reads_and_converts() -> None:
    with patch_instances({"proposal_boxes": Boxes, "objectness_logits": torch.Tensor}) as cls:
        inst = Instances((10, 20), proposal_boxes=Boxes(_random_boxes(3)), objectness_logits=torch.ones(3))
        typed = cls.from_instances(inst)
        assert len(typed) == 3 and typed.has("proposal_boxes") and not typed.has("gt_classes")
        assert len(typed[torch.tensor([0, 2])]) == 2
        with pytest.raises(ValueError, match="gt_classes"):
            cls.from_instances(Instances((1, 1), gt_classes=torch.zeros(2)))
        with pytest.raises(AssertionError, match="objectness_logits"):
            _ = cls((1, 1)).objectness_logits  # unset fields fail loudly
    with pytest.raises(ValueError, match="public identifiers"):
        with patch_instances({"_private": torch.Tensor}):
            pass


# ---- torch.export of the R-CNN family ----


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_torch_export_matches_eager(arch, tiny_model, export_images, tmp_path) -> None:
    model = tiny_model(arch)
    first, second = export_images  # first: output size 2x the input (170 x 128)
    with torch.no_grad():
        want = model([first])[0]["instances"]
    assert len(want) > 5 and want.has("pred_masks")  # enough detections to compare

    exported = export_model(model, [first])
    assert isinstance(exported.program, torch.export.ExportedProgram)
    got = exported([first])[0]["instances"]
    diffs = assert_instances_close(want, got)  # boxes/scores within 1e-4, classes and pasted masks equal
    assert set(diffs) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}

    path = exported.save(tmp_path / f"{arch}.pt2")
    reloaded = load_exported_model(path)([first])[0]["instances"]
    assert_instances_close(want, reloaded)
    with pytest.raises(ValueError, match="export once per input size"):
        exported([second])  # another image size than the example's
