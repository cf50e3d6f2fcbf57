"""TorchScript and ONNX export of tiny Faster/Mask/Keypoint R-CNN, RetinaNet and RPN: exported outputs equal the
eager model's, on the traced image and on another image of another size."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch

from detlightning.export import (
    TracingAdapter,
    export_onnx,
    export_torchscript,
    load_onnx,
    load_torchscript,
    postprocess_outputs,
    tracing_inference_func,
)

from ._compare import assert_instances_close

_EXPORTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def exported(tiny_model, export_images, tmp_path_factory):
    """``exported(arch, fmt)``: the path of the tiny model exported ("torchscript" / "onnx") on the first image;
    each export happens once per module."""

    def get(arch: str, fmt: str) -> str:
        if (arch, fmt) not in _EXPORTS:
            folder = tmp_path_factory.mktemp(f"{arch}_{fmt}")
            model = tiny_model(arch)
            if fmt == "torchscript":
                _EXPORTS[arch, fmt] = export_torchscript(model, [export_images[0]], folder / "model.ts")
            else:
                _EXPORTS[arch, fmt] = export_onnx(model, [export_images[0]], folder / "model.onnx")
        return _EXPORTS[arch, fmt]

    return get


def _eager(model, inp: dict) -> dict:
    with torch.no_grad():
        return model([inp])[0]


def _check_against_eager(model, detector, inputs, max_mask_disagreement: float = 0.0) -> None:
    for inp in inputs:
        eager = _eager(model, inp)
        out = detector([inp])[0]
        assert list(out) == list(eager)
        key = next(iter(eager))
        assert len(eager[key]) > 0, "the test needs detections to compare"
        assert_instances_close(eager[key], out[key], max_mask_disagreement=max_mask_disagreement)
        raw = detector.raw_outputs([inp])[0]  # at the input resolution, before mask pasting
        assert tuple(int(s) for s in raw.image_size) == tuple(inp["image"].shape[1:])
        if raw.has("pred_masks"):
            assert raw.pred_masks.dim() == 4  # (N, 1, M, M) probabilities


@pytest.mark.parametrize(
    "arch", ["faster_rcnn", "faster_rcnn_c4", "mask_rcnn", "cascade_mask_rcnn", "retinanet", "keypoint_rcnn", "rpn"]
)
def test_torchscript_matches_eager_on_two_image_sizes(arch, tiny_model, export_images, exported):
    model = tiny_model(arch)
    detector = load_torchscript(exported(arch, "torchscript"))
    assert detector.output_key == ("proposals" if arch == "rpn" else "instances")
    # traced on the first image; the second has another size (and another number of detections)
    _check_against_eager(model, detector, export_images)


def test_torchscript_file_is_plain_torch_jit(export_images, exported):
    """Without detlightning: torch.jit.load + the flat image tuple gives the flat outputs; the schema is inside."""
    path = exported("faster_rcnn", "torchscript")
    module = torch.jit.load(path)
    with torch.no_grad():
        flat = module(export_images[1]["image"])
    assert isinstance(flat, tuple) and len(flat) == 4  # pred_boxes, pred_classes, scores, image_size
    boxes, classes, scores, size = flat
    assert boxes.shape[1] == 4 and boxes.shape[0] == classes.shape[0] == scores.shape[0] > 0
    assert size.tolist() == list(export_images[1]["image"].shape[1:])
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/detlightning_export.json"))
        meta = json.loads(z.read(name))
    assert meta["meta_architecture"] == "GeneralizedRCNN" and meta["num_images"] == 1


def test_traced_raw_outputs_plus_postprocess_equal_eager(tiny_model, export_images):
    """The documented helper path: trace model.inference(do_postprocess=False), rebuild, postprocess_outputs."""
    model = tiny_model("mask_rcnn")
    func, key = tracing_inference_func(model)
    adapter = TracingAdapter(model, [{"image": export_images[0]["image"]}], func)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    for inp in export_images:
        flat = adapter.flatten_inputs([{"image": inp["image"]}])
        with torch.no_grad():
            flat_outputs = traced(*flat)
        out = postprocess_outputs(adapter.outputs_schema(flat_outputs), [inp], key)[0]
        assert_instances_close(_eager(model, inp)["instances"], out["instances"])


def test_batch_of_two_images(tiny_model, export_images, tmp_path):
    model = tiny_model("faster_rcnn")
    path = export_torchscript(model, list(export_images), tmp_path / "model.ts")
    detector = load_torchscript(path)
    with torch.no_grad():
        eager = model(list(export_images))
    out = detector(list(export_images))
    for e, o in zip(eager, out):
        assert_instances_close(e["instances"], o["instances"])
    with pytest.raises(ValueError, match="batches of 2"):
        detector([export_images[0]])


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet", "rpn"])
def test_onnx_matches_eager_on_two_image_sizes(arch, tiny_model, export_images, exported):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = tiny_model(arch)
    path = exported(arch, "onnx")
    assert not model.training, "export must hand the model back in eval mode"
    detector = load_onnx(path)
    assert detector.input_names == ["image"]
    boxes = "0.proposal_boxes" if arch == "rpn" else "0.pred_boxes"
    assert boxes in detector.output_names and "0.image_size" in detector.output_names
    # pasted masks threshold probabilities at 0.5: a 1e-6 difference may flip a rare pixel
    _check_against_eager(model, detector, export_images, max_mask_disagreement=1e-3)


def test_onnx_raw_mask_probabilities_match(tiny_model, export_images, exported):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = tiny_model("mask_rcnn")
    detector = load_onnx(exported("mask_rcnn", "onnx"))
    for inp in export_images:
        with torch.no_grad():
            eager = model.inference([{"image": inp["image"]}], do_postprocess=False)[0]
        raw = detector.raw_outputs([inp])[0]
        assert_instances_close(eager, raw)


def test_unsupported_model_and_bad_files(tmp_path):
    with pytest.raises(NotImplementedError, match="GeneralizedRCNN"):
        tracing_inference_func(torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError):
        load_torchscript(tmp_path / "missing.ts")
    plain = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    plain.save(str(tmp_path / "plain.ts"))
    with pytest.raises(ValueError, match="not written by"):
        load_torchscript(tmp_path / "plain.ts")


def test_keypoint_rcnn_onnx_is_refused_clearly(tiny_model, export_images, tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(NotImplementedError, match="export_torchscript"):
        export_onnx(tiny_model("keypoint_rcnn"), [export_images[0]], tmp_path / "kp.onnx")


def test_inputs_are_validated(tiny_model, tmp_path):
    model = tiny_model("faster_rcnn")
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]"):
        export_torchscript(model, [{"img": torch.zeros(3, 8, 8)}], tmp_path / "x.ts")
    with pytest.raises(TypeError, match="non-empty list"):
        export_torchscript(model, [], tmp_path / "x.ts")
