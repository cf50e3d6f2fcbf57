"""detlightning.config.reader: one way to read a config, a Hydra DictConfig or a detectron2 CfgNode, without
converting it; a user's registered component receives the very object the user built."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detlightning.config import compose, get_d2_cfg
from detlightning.config.reader import CfgView, cfg_get, cfg_view
from detlightning.layers import ShapeSpec
from detlightning.modeling import ROI_BOX_HEAD_REGISTRY, build_model


def test_cfg_get_on_a_dictconfig():
    cfg = OmegaConf.create({"model": {"roi_heads": {"num_classes": 3, "in_features": ["p2", "p3"]}}})
    assert cfg_get(cfg, "model.roi_heads.num_classes") == 3
    assert cfg_get(cfg, "model.roi_heads") == {"num_classes": 3, "in_features": ["p2", "p3"]}  # plain containers
    assert cfg_get(cfg, "model.missing", None) is None
    with pytest.raises(KeyError, match="model.missing"):
        cfg_get(cfg, "model.missing")


def test_cfgnode_keys_upper_cased_renamed_and_defaulted():
    cfg = get_d2_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    cfg.SOLVER.IMS_PER_BATCH = 6
    cfg.OUTPUT_DIR = "/tmp/run"
    view = cfg_view(cfg)
    assert isinstance(view, CfgView) and view.wrapped is cfg
    assert view.model.roi_heads.num_classes == 7 == cfg_get(cfg, "model.roi_heads.num_classes")
    assert cfg_get(cfg, "dataloader.ims_per_batch") == 6  # renamed: SOLVER.IMS_PER_BATCH
    assert view.paths.output_dir == "/tmp/run"  # OUTPUT_DIR
    # keys detectron2 has no counterpart of come from detlightning/conf's defaults
    assert view.input.augmentations_train == [] and view.solver.optimizer == "SGD"
    assert "roi_heads" in view.model and "no_such_key" not in view.model
    with pytest.raises(AttributeError, match="model.no_such_key"):
        _ = view.model.no_such_key
    with pytest.raises(TypeError, match="read-only"):
        view.model.device = "cpu"


def test_user_keys_of_a_cfgnode_are_readable():
    cfg = get_d2_cfg()
    cfg.MODEL.MY_HEAD = type(cfg)()
    cfg.MODEL.MY_HEAD.DEPTH = 4
    assert cfg_view(cfg).model.my_head.depth == 4


class _RecordingBoxHead(nn.Module):
    """A user's box head reading its own key from the CfgNode it receives (detectron2's documented style)."""

    received: list = []

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        _RecordingBoxHead.received.append(cfg)
        dim = cfg.MODEL.MY_BOX_HEAD.DIM
        self.fc = nn.Linear(input_shape.channels * input_shape.height * input_shape.width, dim)
        self.output_shape = ShapeSpec(channels=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


def test_registered_component_receives_the_users_cfgnode():
    if "_RecordingBoxHead" not in ROI_BOX_HEAD_REGISTRY:
        ROI_BOX_HEAD_REGISTRY.register(_RecordingBoxHead)
    _RecordingBoxHead.received.clear()
    from detlightning import model_zoo

    cfg = get_d2_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "_RecordingBoxHead"
    cfg.MODEL.MY_BOX_HEAD = type(cfg)()
    cfg.MODEL.MY_BOX_HEAD.DIM = 32
    model = build_model(cfg)
    assert len(_RecordingBoxHead.received) == 1 and _RecordingBoxHead.received[0] is cfg
    assert model.roi_heads.box_head.fc.out_features == 32
    assert model.roi_heads.box_predictor.cls_score.in_features == 32


def test_dictconfig_builds_unchanged():
    cfg = compose(["model=faster_rcnn", "model.resnets.depth=18", "model.resnets.res2_out_channels=64"])
    assert cfg_view(cfg) is cfg
    assert build_model(cfg).roi_heads.box_predictor.cls_score.out_features == cfg.model.roi_heads.num_classes + 1


def test_every_key_library_code_reads_is_defined_in_the_config_files():
    """Defaults live only in detlightning/conf: each literal key read through cfg_get exists in the default
    composition (``datasets.shapes`` comes with data=shapes, ``model.backbone._target_`` only with a _target_)."""
    import re
    from pathlib import Path

    optional = {"datasets.shapes", "model.backbone._target_"}
    pkg = Path(__file__).resolve().parents[2] / "detlightning"
    keys = {m for p in pkg.rglob("*.py") for m in re.findall(r'cfg_get\([\w.]+, "([\w.]+)"', p.read_text())}
    assert len(keys) > 30
    defaults = compose([])
    missing = sorted(k for k in keys - optional if OmegaConf.select(defaults, k, default="<absent>") == "<absent>")
    assert not missing, f"keys read in code but defined in no config file: {missing}"


def test_build_model_reports_unsupported_detectron2_keys_but_not_project_keys():
    import warnings

    from detlightning import model_zoo
    from detlightning.config import CfgNode
    from detlightning.config.d2_compat import UnsupportedD2KeysWarning

    cfg = get_d2_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    cfg.MODEL.MY_HEAD = CfgNode({"DIM": 3})  # a project's own key: it reaches the project's components
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedD2KeysWarning)
        build_model(cfg)
    cfg.FLOAT32_PRECISION = "high"  # no detlightning equivalent, so not silently ignored
    with pytest.warns(UnsupportedD2KeysWarning, match=r"FLOAT32_PRECISION") as record:
        build_model(cfg)
    assert "MY_HEAD" not in str(record[0].message)
