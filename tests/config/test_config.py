from __future__ import annotations

import pytest
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError

from detlightning.config import compose, configurable


def test_defaults_are_detectron2_defaults_for_fpn():
    cfg = compose()
    assert cfg.model.meta_architecture == "GeneralizedRCNN"
    assert cfg.model.backbone.name == "build_resnet_fpn_backbone"
    assert cfg.model.rpn.in_features == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.model.roi_heads.name == "StandardROIHeads"
    assert cfg.input.format == "BGR"
    # the built-in shapes dataset is the default data: 3 thing classes, small images
    assert cfg.datasets.train == ["shapes_train"] and cfg.model.roi_heads.num_classes == 3
    assert cfg.input.min_size_test == 256


def test_groups_compose_like_model_zoo_files():
    kp = compose(["model=keypoint_rcnn", "backbone=resnet101", "data=coco_keypoints"])
    assert kp.model.keypoint_on and kp.model.roi_heads.num_classes == 1
    assert kp.model.roi_keypoint_head.num_keypoints == 17 and kp.input.min_size_test == 800
    assert kp.model.rpn.post_nms_topk_train == 1500  # the model file wins over its base_rcnn_fpn heads
    assert kp.model.resnets.depth == 101
    x = compose(["model=mask_rcnn", "backbone=resnext101_32x8d"])
    resnets = x.model.resnets
    assert (resnets.num_groups, resnets.width_per_group, resnets.stride_in_1x1) == (32, 8, False)
    assert x.model.backbone.name == "build_resnet_fpn_backbone" and x.model.mask_on
    c4 = compose(["model=faster_rcnn_c4", "backbone=resnet50_c4"])
    assert c4.model.roi_heads.name == "Res5ROIHeads" and c4.model.rpn.pre_nms_topk_test == 6000
    assert c4.model.backbone.name == "build_resnet_backbone" and list(c4.model.rpn.in_features) == ["res4"]


def test_each_group_sets_only_its_own_part():
    """backbone= changes the feature extractor and nothing else; the heads and input sizes are the model's and the
    data's."""
    def flat(cfg):
        from omegaconf import OmegaConf

        out = {}

        def walk(node, prefix):
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    out[f"{prefix}{k}"] = v

        walk(OmegaConf.to_container(cfg, resolve=True), "")
        return out

    base = flat(compose(["model=mask_rcnn", "backbone=resnet50"]))
    for backbone in ("resnet101", "resnext101_32x8d", "resnet50_c4", "resnet101_c4"):
        other = flat(compose(["model=mask_rcnn", f"backbone={backbone}"]))
        changed = {k for k in base if base[k] != other.get(k)}
        assert changed, backbone
        assert all(k.startswith(("model.backbone.", "model.resnets.", "model.fpn.", "model.pixel_"))
                   for k in changed), (backbone, sorted(changed))


def test_unknown_key_and_option_fail_with_choices():
    with pytest.raises(Exception, match="model.foo"):
        compose(["model.foo=1"])
    with pytest.raises(Exception, match="resnet50_c4"):  # the message lists the valid options
        compose(["backbone=resnet5"])
    cfg = compose()
    with pytest.raises(ConfigAttributeError):
        _ = cfg.model.not_a_key


class _Head:
    @configurable
    def __init__(self, in_channels: int, num_classes: int = 3) -> None:
        self.in_channels, self.num_classes = in_channels, num_classes

    @classmethod
    def from_config(cls, cfg: DictConfig, in_channels: int) -> dict:
        return {"in_channels": in_channels, "num_classes": cfg.model.roi_heads.num_classes}


def test_configurable_both_styles():
    cfg = compose(["model.roi_heads.num_classes=7"])
    assert vars(_Head(4)) == {"in_channels": 4, "num_classes": 3}
    assert vars(_Head(cfg, 5)) == {"in_channels": 5, "num_classes": 7}
    assert vars(_Head(cfg, in_channels=6, num_classes=9)) == {"in_channels": 6, "num_classes": 9}


@configurable(from_config=lambda cfg, scale=1: {"n": cfg.model.roi_heads.num_classes * scale})
def _make(n: int) -> int:
    return n


def test_configurable_function():
    cfg = compose(["model.roi_heads.num_classes=2"])
    assert _make(5) == 5
    assert _make(cfg, scale=3) == 6


def test_roi_heads_and_proposal_generator_groups_swap_model_parts() -> None:
    from detlightning.modeling import build_model
    from detlightning.modeling.roi_heads import CascadeROIHeads

    cfg = compose(["model=mask_rcnn", "roi_heads=cascade", "model.resnets.depth=18",
                   "model.resnets.res2_out_channels=64"])
    assert cfg.model.roi_heads.name == "CascadeROIHeads" and cfg.model.roi_box_head.cls_agnostic_bbox_reg
    assert cfg.model.mask_on and cfg.model.roi_heads.num_classes == 3  # the model's and the dataset's settings stay
    model = build_model(cfg)
    assert isinstance(model.roi_heads, CascadeROIHeads) and model.roi_heads.mask_on
    # unselected (null) groups leave the model's own parts
    assert compose(["model=mask_rcnn"]).model.roi_heads.name == "StandardROIHeads"
    pre = compose(["proposal_generator=precomputed"])
    assert pre.model.proposal_generator.name == "PrecomputedProposals" and pre.model.load_proposals
    with pytest.raises(Exception, match="cascade"):  # unknown option: Hydra lists the valid ones
        compose(["roi_heads=cascadde"])
