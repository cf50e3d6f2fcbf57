"""detectron2's ``DefaultPredictor``: one image in, the model's outputs at its original resolution out. Plain
PyTorch (no Lightning): usable in any inference service."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ..modeling.fast_inference import compile_for_inference, set_inference_precision

__all__ = ["DefaultPredictor"]


class DefaultPredictor:
    """detectron2's ``DefaultPredictor``: ``predictor(image)`` runs the model on ONE image.

    Args:
        cfg: the config; ``model.weights`` (detectron2 ``.pth``/``.pkl`` or Lightning ``.ckpt``) is loaded;
            images are resized to ``input.min_size_test`` (max side ``input.max_size_test``); ``input.format``
            ("BGR" or "RGB") is the channel order the *model* expects; the opt-in fast path ``test.precision``
            (``bf16``/``fp16``: the dense parts under autocast) and ``model.compile`` (``torch.compile``) apply
            (README "Speed").

    ``__call__(original_image: np.ndarray (H, W, 3) uint8, BGR as OpenCV reads it) -> dict`` (``{"instances":
    ...}``, ``"sem_seg"``, ``"panoptic_seg"`` as the model returns them, in the original image's coordinates).
    ``metadata`` is ``MetadataCatalog.get(datasets.test[0])`` (class names for the Visualizer), when set.
    """

    def __init__(self, cfg: Any):
        from ..checkpoint import DetectionCheckpointer
        from ..config.reader import cfg_get, cfg_view
        from ..data import MetadataCatalog
        from ..data.transforms import ResizeShortestEdge
        from ..modeling.meta_arch.build import build_model

        self.cfg = copy.deepcopy(cfg)  # as given: a DictConfig, or a detectron2 CfgNode
        view = cfg_view(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        # where build_model put the model (a "cuda" config on a CPU-only machine builds on the CPU)
        self.device = next(iter(self.model.state_dict().values()), torch.empty(0)).device
        test_sets = list(view.datasets.test or [])
        self.metadata = MetadataCatalog.get(test_sets[0]) if test_sets else None
        if view.model.weights:
            DetectionCheckpointer(self.model).load(view.model.weights)
        self.aug = ResizeShortestEdge([view.input.min_size_test, view.input.min_size_test], view.input.max_size_test)
        self.input_format = view.input.format
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"DefaultPredictor supports input.format RGB or BGR, got {self.input_format!r}")
        # the opt-in fast path (CfgNode: cfg.TEST.PRECISION / cfg.MODEL.COMPILE, set by hand: not detectron2 keys)
        self.precision = str(cfg_get(self.cfg, "test.precision", "fp32") or "fp32")
        set_inference_precision(self.model, self.precision)
        if cfg_get(self.cfg, "model.compile", False):
            compile_for_inference(self.model)

    def __call__(self, original_image: np.ndarray) -> dict[str, Any]:
        self._check_image(original_image)
        with torch.no_grad():
            if self.input_format == "RGB":  # the model wants input.format; callers pass OpenCV-style BGR
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = self.aug.get_transform(original_image).apply_image(original_image)
            image = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
            image = image.to(self.device)
            return self.model([{"image": image, "height": height, "width": width}])[0]

    @staticmethod
    def _check_image(image: Any) -> None:
        """One non-empty (H, W, 3) numpy image of finite values; a float image with max <= 1 warns (once, in the
        model's entry check) since the model expects 0-255 pixels."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"DefaultPredictor expects one (H, W, 3) uint8 BGR image as a numpy array, got {shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(
                f"DefaultPredictor got an empty image of shape {image.shape}: height and width must be > 0"
            )
        numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
        if image.dtype == np.bool_ or not numeric:
            raise ValueError(f"DefaultPredictor expects a uint8 (or float, 0-255) image, got dtype {image.dtype}")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise ValueError(f"DefaultPredictor got an image with {bad} NaN/inf pixel value(s); images must be finite")
