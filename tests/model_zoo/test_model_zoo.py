"""detlightning.model_zoo: detectron2 model-zoo names -> shipped configs, checkpoint URLs, and models."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from detlightning import model_zoo
from detlightning.config import get_d2_cfg, to_detlightning_cfg

D2_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "d2_configs"

# the standard entries (detectron2 configs/ paths) that must ship with the package
STANDARD = [
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
]

S3 = "https://dl.fbaipublicfiles.com/detectron2/"


def test_standard_entries_ship_and_convert_without_loss() -> None:
    assert set(STANDARD) <= set(model_zoo.list_configs())
    for name in STANDARD:
        assert Path(model_zoo.get_config_file(name)).is_file()
        d2 = model_zoo.get_d2_config(name)
        d2.MODEL.DEVICE = "cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cfg = to_detlightning_cfg(d2, strict=True)  # every key the file sets has an equivalent
        m = cfg.model
        # what the name says about the model
        assert m.resnets.depth == (101 if "_101_" in name else 50), name
        assert m.mask_on == (("mask_rcnn" in name) or ("panoptic" in name)), name
        assert m.keypoint_on == ("keypoint" in name), name
        if "X_101_32x8d" in name:
            assert (m.resnets.num_groups, m.resnets.width_per_group, m.resnets.stride_in_1x1) == (32, 8, False)
            assert m.weights == "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"
        else:
            assert m.weights == f"detectron2://ImageNetPretrained/MSRA/R-{m.resnets.depth}.pkl", name
        meta = "RetinaNet" if "retinanet" in name else "PanopticFPN" if "panoptic" in name else "GeneralizedRCNN"
        assert m.meta_architecture == meta, name
        if "_C4_" in name:
            assert m.roi_heads.name == "Res5ROIHeads" and m.backbone.name == "build_resnet_backbone", name
        elif "cascade" in name:
            assert m.roi_heads.name == "CascadeROIHeads" and m.roi_box_head.cls_agnostic_bbox_reg, name
        elif "retinanet" not in name:
            assert m.roi_heads.name == "StandardROIHeads" and m.backbone.name == "build_resnet_fpn_backbone", name
        if "keypoint" in name:
            assert m.roi_heads.num_classes == 1 and cfg.datasets.train == ["keypoints_coco_2017_train"]
        else:
            assert m.roi_heads.num_classes == 80
        three_x = name.endswith("_3x.yaml")
        assert cfg.solver.max_iter == (270000 if three_x else 90000), name
        assert cfg.solver.steps == ([210000, 250000] if three_x else [60000, 80000]), name
        assert cfg.solver.base_lr == (0.01 if "retinanet" in name else 0.02), name
        assert cfg.dataloader.ims_per_batch == 16


@pytest.mark.parametrize(
    "name", ["COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"]
)
def test_shipped_config_equals_detectron2_file(name: str) -> None:
    """The shipped yaml gives the same CfgNode as the copy of detectron2's own file in tests/data."""
    reference = get_d2_cfg()
    reference.merge_from_file(str(D2_CONFIGS / name))
    assert model_zoo.get_d2_config(name) == reference


def test_checkpoint_urls() -> None:
    known = {  # detectron2's released models
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml": "137849600/model_final_f10217.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": "137257794/model_final_b275ba.pkl",
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml": "190397773/model_final_bfca0b.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml": "137849621/model_final_a6e10b.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml": "139514569/model_final_c10459.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml": "144998488/model_final_480dd8.pkl",
    }
    for name, suffix in known.items():
        url = f"{S3}{name[: -len('.yaml')]}/{suffix}"
        assert model_zoo.get_checkpoint_url(name) == url
        assert model_zoo.get_checkpoint_url(name[: -len(".yaml")]) == url  # the extension is optional
        assert model_zoo.get_hydra_config(name, trained=True).model.weights == url
        assert model_zoo.get_config(name, trained=True).MODEL.WEIGHTS == url
        assert model_zoo.get_d2_config(name, trained=True).MODEL.WEIGHTS == url
    for name in STANDARD:  # every shipped standard entry has a released model
        assert re.fullmatch(rf"{re.escape(S3 + name[:-5])}/\d+/model_final_[0-9a-f]{{6}}\.pkl",
                            model_zoo.get_checkpoint_url(name)), name


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(RuntimeError, match="COCO-Detection/faster_rcnn_R_18_FPN_1x.yaml"):
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_18_FPN_1x.yaml")
    with pytest.raises(RuntimeError, match="not available"):
        model_zoo.get_config_file("../../pyproject.toml")
    with pytest.raises(RuntimeError, match="No pretrained model for 'nope/model.yaml'"):
        model_zoo.get_checkpoint_url("nope/model.yaml")


def test_get_trained_offline_names_url_and_cache_path_then_loads_placed_file(tmp_path: Path, monkeypatch) -> None:
    name = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    monkeypatch.setenv("DETLIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETLIGHTNING_OFFLINE", "1")
    torch.set_num_threads(1)
    url = model_zoo.get_checkpoint_url(name)
    local = tmp_path / "cache" / "detectron2" / name[: -len(".yaml")] / "137849600" / "model_final_f10217.pkl"
    with pytest.raises(FileNotFoundError) as info:
        model_zoo.get(name, trained=True, device="cpu")
    assert url in str(info.value) and str(local) in str(info.value)

    # a detectron2 model-zoo .pkl placed at the named path is what get() loads (a few tensors suffice here)
    g = np.random.default_rng(0)
    weights = {
        "roi_heads.box_predictor.cls_score.weight": g.standard_normal((81, 1024)).astype(np.float32),
        "roi_heads.box_predictor.cls_score.bias": g.standard_normal(81).astype(np.float32),
        "backbone.fpn_lateral2.weight": g.standard_normal((256, 256, 1, 1)).astype(np.float32),
    }
    local.parent.mkdir(parents=True)
    with open(local, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    model = model_zoo.get(name, trained=True, device="cpu")
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key
    assert model.training and type(model).__name__ == "GeneralizedRCNN"
