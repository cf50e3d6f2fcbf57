"""scripts/lazyconfig_train_net.py: a LazyConfig file written the way detectron2's docs show trains on the shapes
data, evaluates, checkpoints, resumes and evaluates a checkpoint (``--eval-only``), all on Lightning."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from detlightning.data import DatasetCatalog
from detlightning.data.datasets.shapes import register_shapes
from tests._scripts import load_script

# written as detectron2's LazyConfig tutorial writes configs: L(GeneralizedRCNN)(backbone=L(FPN)(...), ...)
CONFIG = """
from omegaconf import OmegaConf

import detlightning.data.transforms as T
from detlightning.config import LazyCall as L
from detlightning.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detlightning.data import get_detection_dataset_dicts
from detlightning.evaluation import COCOEvaluator
from detlightning.layers import ShapeSpec
from detlightning.modeling import FPN, GeneralizedRCNN, ResNet
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
from detlightning.modeling.backbone import BasicStem
from detlightning.modeling.backbone.fpn import LastLevelMaxPool
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.poolers import ROIPooler
from detlightning.modeling.proposal_generator import RPN, StandardRPNHead
from detlightning.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, MaskRCNNConvUpsampleHead
from detlightning.modeling.roi_heads import StandardROIHeads
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler
from detlightning.solver.build import get_default_optimizer_params
import torch

levels = ["p2", "p3", "p4", "p5"]
scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
            stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
            out_features=["res2", "res3", "res4", "res5"],
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=32,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=levels + ["p6"],
        head=L(StandardRPNHead)(in_channels=32, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[16], [32], [64], [128], [256]], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_topk=(200, 100),
        post_nms_topk=(50, 50),
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=32,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=levels,
        box_pooler=L(ROIPooler)(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_head=L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=32, height=7, width=7), conv_dims=[],
                                       fc_dims=[64]),
        box_predictor=L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=64), num_classes="${..num_classes}",
                                              box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5))),
        mask_in_features=levels,
        mask_pooler=L(ROIPooler)(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(input_shape=ShapeSpec(channels=32, height=14, width=14),
                                              num_classes="${..num_classes}", conv_dims=[32, 32]),
    ),
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.12, 58.395],
    input_format="BGR",
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lazy_shapes_train"),
    mapper=L(DatasetMapper)(is_train=True, augmentations=[L(T.RandomFlip)(horizontal=True)], image_format="BGR",
                            use_instance_mask=True),
    total_batch_size=2,
    num_workers=0,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lazy_shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=0,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = L(torch.optim.SGD)(params=L(get_default_optimizer_params)(weight_decay_norm=0.0), lr=0.01, momentum=0.9)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[3], num_updates=4),
    warmup_length=0.25,
    warmup_factor=0.1,
)
train = dict(output_dir="OUT", init_checkpoint="", max_iter=100, amp=dict(enabled=False),
             ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
             checkpoint_period=3, eval_period=0, log_period=1, device="cpu", seed=3)
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy_shapes")
    names = register_shapes("lazy_shapes", root=root, num_train=6, num_val=3, image_size=96, replace=True)
    yield root
    for name in names:
        DatasetCatalog.remove(name)


def _args(config_file, *opts, eval_only=False, resume=False):
    script = load_script("lazyconfig_train_net")
    argv = ["--config-file", str(config_file)] + (["--eval-only"] if eval_only else [])
    argv += ["--resume"] if resume else []
    return script, script.default_argument_parser().parse_args(argv + list(opts))


def test_docs_style_lazy_config_trains_evaluates_checkpoints_and_resumes(shapes, tmp_path):
    out = tmp_path / "out"
    cfg_file = tmp_path / "my_config.py"
    cfg_file.write_text(textwrap.dedent(CONFIG).replace("OUT", str(out)))
    overrides = ["train.max_iter=5", "model.roi_heads.num_classes=3"]

    script, args = _args(cfg_file, *overrides)
    results = script.main(args)
    # evaluated once at the end, with the evaluator of the config
    assert "bbox" in results["lazy_shapes_val"] and "segm" in results["lazy_shapes_val"]
    # the overrides took effect: 3 classes, 5 iterations; checkpoints every 3 and the final one, detectron2-loadable
    assert (out / "model_0000002.pth").is_file() and (out / "model_final.pth").is_file()
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 4
    assert final["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 classes + background
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "total_loss" in x] == [0, 1, 2, 3, 4]
    # lr_multiplier over the fraction of 5 iterations: linear warmup from 0.1 over the first quarter (iteration 1
    # at 0.2: 0.1 + 0.8 * 0.9 = 0.82), then x1 until the milestone at 3/4 of training, then x0.1
    lrs = [x["lr"] for x in lines if "lr" in x]
    assert lrs == pytest.approx([0.001, 0.0082, 0.01, 0.01, 0.001])
    saved = (out / "config.yaml").read_text()
    assert "max_iter: 5" in saved and "num_classes: 3" in saved
    assert (out / "last.ckpt").is_file()

    # --resume continues to a longer schedule from last.ckpt (written after 5 iterations, the end of training);
    # each evaluation is recorded at the iteration it followed (4, then 6), on a line of its own since that
    # iteration's training line was already written, and hides no training line
    script, args = _args(cfg_file, "train.max_iter=7", "model.roi_heads.num_classes=3", resume=True)
    script.main(args)
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "total_loss" in x] == [0, 1, 2, 3, 4, 5, 6]
    assert [x["iteration"] for x in lines if "bbox/AP" in x] == [4, 6]

    # --eval-only on the final weights gives the numbers the end of training gave
    script, args = _args(cfg_file, "model.roi_heads.num_classes=3", f"train.init_checkpoint={out}/model_final.pth",
                         eval_only=True)
    again = script.main(args)
    assert set(again["lazy_shapes_val"]) == {"bbox", "segm"}


def test_a_typo_in_an_override_is_an_error_naming_the_key(tmp_path):
    cfg_file = tmp_path / "my_config.py"
    cfg_file.write_text(textwrap.dedent(CONFIG).replace("OUT", str(tmp_path / "out")))
    script, args = _args(cfg_file, "train.max_iters=5")
    with pytest.raises(KeyError, match="train.max_iters"):
        script.main(args)


def test_model_zoo_names_are_accepted_as_config_file(tmp_path):
    from detlightning.cli import load_lazy_config

    cfg = load_lazy_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", ["train.max_iter=10"], str(tmp_path))
    assert cfg.train.max_iter == 10 and cfg.model.roi_heads.num_classes == 80 and cfg.train.output_dir == str(tmp_path)
    cfg = load_lazy_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", ["train.output_dir=/x"], str(tmp_path))
    assert cfg.train.output_dir == "/x"  # a given output dir wins over the run dir


def test_train_py_trains_a_lazy_config_through_hydra(shapes, tmp_path):
    """The Hydra way: scripts/train.py lazy_config=<file> lazy_overrides=[...] (sweepable with -m)."""
    from detlightning.config import compose

    cfg_file = tmp_path / "my_config.py"
    cfg_file.write_text(textwrap.dedent(CONFIG).replace("OUT", "unused"))
    out = tmp_path / "run"
    cfg = compose([f"lazy_config={cfg_file}", "+lazy.train.max_iter=2", "+lazy.model.roi_heads.num_classes=3",
                   'lazy_overrides=["optimizer.lr=0.005"]', f"paths.output_dir={out}"])
    results = load_script("train").run(cfg)
    assert "bbox" in results["lazy_shapes_val"]
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    saved = (out / "config.yaml").read_text()
    assert "max_iter: 2" in saved and "num_classes: 3" in saved and "lr: 0.005" in saved
    with pytest.raises(KeyError, match="train.max_itr"):
        load_script("train").run(compose([f"lazy_config={cfg_file}", "+lazy.train.max_itr=2"]))


def test_resume_of_a_finished_lazy_run_trains_nothing(shapes, tmp_path):
    """--resume when last.ckpt already reached train.max_iter: no retraining, model_final.pth untouched, the final
    evaluation returned; last.ckpt is written at the end although 4 is no multiple of checkpoint_period=3."""
    out = tmp_path / "out"
    cfg_file = tmp_path / "my_config.py"
    cfg_file.write_text(textwrap.dedent(CONFIG).replace("OUT", str(out)))
    overrides = ["train.max_iter=4", "model.roi_heads.num_classes=3"]
    script, args = _args(cfg_file, *overrides)
    script.main(args)
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    final, metrics = (out / "model_final.pth").read_bytes(), (out / "metrics.json").read_bytes()

    script, args = _args(cfg_file, *overrides, resume=True)
    again = script.main(args)
    assert set(again["lazy_shapes_val"]) == {"bbox", "segm"}
    assert (out / "model_final.pth").read_bytes() == final and (out / "metrics.json").read_bytes() == metrics
