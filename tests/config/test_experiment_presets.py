"""Our Hydra experiment presets reproduce detectron2's model-zoo entries: every preset equals the conversion of the
COCO / Misc model-zoo yaml of the same name (shipped in detlightning/model_zoo/configs, with its _BASE_ chain) in
every model, input, dataset, solver and test setting."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detlightning import model_zoo
from detlightning.config import compose

EXPERIMENTS = Path(__file__).resolve().parents[2] / "detlightning" / "conf" / "experiment"
# model-config nodes a meta-architecture does not read
_RCNN_HEADS = ("rpn", "roi_heads", "roi_box_head", "roi_box_cascade_head", "roi_mask_head", "roi_keypoint_head")
UNUSED_BY = {
    "GeneralizedRCNN": ("retinanet", "sem_seg_head", "panoptic_fpn"),
    "PanopticFPN": ("retinanet",),
    "RetinaNet": _RCNN_HEADS + ("sem_seg_head", "panoptic_fpn"),
}
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "shapes_quick")
# a preset is named after its COCO / Misc model-zoo entry (LVIS, Cityscapes, VOC, ... entries have no preset yet)
_PRESET_FOLDERS = ("COCO-Detection", "COCO-InstanceSegmentation", "COCO-Keypoints", "COCO-PanopticSegmentation", "Misc")
ZOO_NAMES = [
    n
    for n in model_zoo.list_configs()
    if n.endswith(".yaml") and Path(n).parent.as_posix() in _PRESET_FOLDERS and Path(n).stem in PRESETS
]


def test_every_preset_has_its_model_zoo_entry() -> None:
    assert sorted(Path(n).stem for n in ZOO_NAMES) == PRESETS
    assert len(ZOO_NAMES) >= 20


@pytest.mark.parametrize("name", ZOO_NAMES, ids=[Path(n).stem for n in ZOO_NAMES])
def test_preset_equals_converted_model_zoo_yaml(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model-zoo files use nothing we do not support
        converted = model_zoo.get_hydra_config(name)
    preset = compose([f"experiment={Path(name).stem}", f"model.device={converted.model.device}"])
    for section in ("model", "input", "datasets", "solver", "test"):
        got, want = OmegaConf.to_container(preset[section]), OmegaConf.to_container(converted[section])
        if section == "model":  # sub-configs of heads the architecture never builds may differ (detectron2 too)
            for unused in UNUSED_BY[converted.model.meta_architecture]:
                got.pop(unused), want.pop(unused)
        assert got == want, (section, _diff(got, want))
    for key in ("ims_per_batch", "filter_empty_annotations", "sampler_train", "aspect_ratio_grouping"):
        assert preset.dataloader[key] == converted.dataloader[key], key


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}.{k}")
        return out
    return [] if a == b else [f"{prefix}: preset {a!r} vs model zoo {b!r}"]
