"""Export detectors to TorchScript (tracing) and ONNX (``detectron2.export``'s tracing path).

**Exporting (README).** ``export_torchscript(model, inputs, "model.ts")`` traces an eval-mode model on example inputs
(``[{"image": (3, H, W) tensor}]``) through ``TracingAdapter`` (which flattens ``list[dict]`` inputs and ``Instances``
outputs into tuples of tensors) and saves a ``torch.jit`` file; ``export_onnx(model, inputs, "model.onnx")`` writes
the same trace as ONNX (TorchScript-based exporter, opset 17; needs ``pip install onnx onnxruntime``, i.e. the
``export`` extra). ``load_torchscript(path)`` / ``load_onnx(path)`` (onnxruntime) return callables with the eager
model's interface: ``detector([{"image": ..., "height": h, "width": w}])`` gives ``[{"instances": Instances}]``,
with the eager model's values (boxes and scores within 1e-4 px, same classes; pasted masks equal, or for ONNX equal
up to rare pixels whose probability is within float rounding of 0.5). As in detectron2, the traced function is
``model.inference(inputs, do_postprocess=False)``; the rescaling to ``height``/``width`` and mask pasting run in
Python afterwards (``postprocess_outputs``), so exported graphs return raw outputs at the input resolution. The
files are plain ``torch.jit`` / ONNX models (one image tensor in, e.g. ``0.pred_boxes``, ``0.scores``,
``0.pred_classes``, ``0.pred_masks``, ``0.image_size`` out) that other runtimes can load; ``scripts/export.py``
exports a configured model and checks it against eager mode. What exports:

| model | TorchScript (trace) | ONNX |
|---|---|---|
| Faster R-CNN, Mask R-CNN (FPN and C4), Cascade (Mask) R-CNN | yes | yes |
| RetinaNet | yes | yes |
| RPN only (`ProposalNetwork`) | yes | yes |
| Keypoint R-CNN | yes (keypoint decoding is scripted inside the trace) | no: raises `NotImplementedError` |
| semantic segmentation, Panoptic FPN | no: `NotImplementedError` (their outputs hold Python dicts) | no |

A traced graph works for any image size and any number of detections, but fixes the batch size (the number of
example inputs), the device, the input dtype of the example (``DefaultPredictor`` feeds float32) and every config
value (score thresholds, detections per image). Scripting (``torch.jit.script``) of whole models, and the dynamo
ONNX exporter, are not supported. Numerics: eager mode runs per-class NMS as a loop over the classes when there
are more than 1000 candidate boxes (torchvision's choice), the traced graph always uses the coordinate-offset
batched NMS; both keep the same boxes except in ties, so with a very low score threshold, tied scores may come out
in another order. ONNX Runtime's convolutions round differently from PyTorch's: boxes agree within ~1 float32 ulp
of the coordinate (6e-5 px at 512 px), larger for badly conditioned (e.g. random) weights.
"""
from .adapters import ExportedDetector, postprocess_outputs, tracing_inference_func
from .flatten import TracingAdapter, flatten_to_tuple, patch_builtin_len
from .onnx import ONNXRuntimeDetector, export_onnx, load_onnx
from .torch_export import ExportedProgramDetector, export_model, load_exported_model
from .torchscript import (
    TorchScriptDetector,
    export_torchscript,
    load_torchscript,
    scripting_with_instances,
    trace_model,
)
from .torchscript_patch import freeze_training_mode, patch_instances

__all__ = [
    "ExportedDetector",
    "ExportedProgramDetector",
    "ONNXRuntimeDetector",
    "TorchScriptDetector",
    "TracingAdapter",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "flatten_to_tuple",
    "freeze_training_mode",
    "load_exported_model",
    "load_onnx",
    "load_torchscript",
    "patch_builtin_len",
    "patch_instances",
    "postprocess_outputs",
    "scripting_with_instances",
    "trace_model",
    "tracing_inference_func",
]
