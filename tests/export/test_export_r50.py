"""Mask R-CNN R50-FPN with detectron2-format weights (../shared/compat) on a real photo: the TorchScript and ONNX
exports give the eager outputs (boxes, scores, classes within 1e-4; masks), also on a second image of another
size. Skipped when ../shared/compat is absent. About 35 s on one core (an R50 forward pass takes seconds)."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from detlightning.export import export_onnx, export_torchscript, load_onnx, load_torchscript

from ._compare import assert_instances_close

pytestmark = pytest.mark.slow
ARCH = "mask_rcnn_R_50_FPN"


@pytest.fixture(scope="module")
def r50(compat_dir):
    """(model, [input at 512 px with output size 512, a 384x448 crop of it], eager outputs)."""
    from tests.compat import _parity

    model = _parity.build(ARCH)
    model.load_state_dict(_parity.reference_weights(ARCH))
    ref = _parity.reference_input()  # the astronaut photo, resized to 800 px; 512 px originally
    image = F.interpolate(ref["image"][None].float(), size=(512, 512), mode="bilinear", antialias=True)[0]
    image = image.round().clamp(0, 255).to(torch.uint8)
    inputs = [{"image": image, "height": ref["height"], "width": ref["width"]}, {"image": image[:, :384, :448]}]
    with torch.no_grad():
        eager = [model([x])[0]["instances"] for x in inputs]
    assert all(len(e) > 10 for e in eager)
    return model, inputs, eager


def test_torchscript_r50_matches_eager(r50, tmp_path):
    model, inputs, eager = r50
    detector = load_torchscript(export_torchscript(model, inputs[:1], tmp_path / "model.ts"))
    for inp, e in zip(inputs, eager):
        assert_instances_close(e, detector([inp])[0]["instances"])


def test_onnx_r50_matches_eager(r50, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model, inputs, eager = r50
    detector = load_onnx(export_onnx(model, inputs[:1], tmp_path / "model.onnx"))
    for inp, e in zip(inputs, eager):
        assert_instances_close(e, detector([inp])[0]["instances"], max_mask_disagreement=1e-3)
