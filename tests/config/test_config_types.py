"""Override values of the wrong type fail when the config is composed, naming the key and the expected type
(``compose``, ``setup_cfg`` and a real ``@hydra.main`` run of scripts/train.py); valid overrides keep passing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detlightning.cli import setup_cfg
from detlightning.config import compose
from detlightning.config.config import compose_without_checks
from detlightning.config.schema import ConfigTypeError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.max_iter=abc", r"solver\.max_iter: expected an int, got str 'abc' \(default 40000"),
        ("model.roi_heads.num_classes=three", r"model\.roi_heads\.num_classes: expected an int, got str 'three'"),
        ("dataloader.ims_per_batch=2.5", r"dataloader\.ims_per_batch: expected an int, got float 2\.5"),
        ("solver.base_lr=fast", r"solver\.base_lr: expected a float \(or int\), got str 'fast'"),
        ("model.mask_on=1", r"model\.mask_on: expected a bool \(true/false\), got int 1"),
        ("solver.max_iter=true", r"solver\.max_iter: expected an int, got bool True"),
        ("solver.steps=[a]", r"solver\.steps: expected a list of numbers \(\[\.\.\.\]\), got list \['a'\]"),
        ("datasets.train=shapes_train", r"datasets\.train: expected a list of str \(\[\.\.\.\]\), got str"),
        ("callbacks.metrics_writer.period=often", r"callbacks\.metrics_writer\.period: expected an int"),
        ("solver.max_iter=${model.device}", r"solver\.max_iter: expected an int, got str 'cpu'"),
    ],
)
def test_wrong_type_names_key_and_expected_type(override, message):
    with pytest.raises(ConfigTypeError, match=message):
        compose(["model=mask_rcnn", override])


def test_mapping_keys_take_mappings():
    assert compose(["model.backbone={name: build_resnet_backbone, freeze_at: 0}"]).model.backbone.freeze_at == 0
    with pytest.raises(ConfigTypeError, match=r"model\.backbone: expected a mapping \(\{key: value\}\), got int 3"):
        compose(["model.backbone=3"])


def test_all_problems_are_listed_together():
    with pytest.raises(ConfigTypeError) as err:
        compose(["solver.max_iter=abc", "dataloader.ims_per_batch=2.5", "solver.base_lr=0.1"])
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["solver.max_iter", "dataloader.ims_per_batch"]


def test_defaults_come_from_the_selected_groups():
    # experiment=shapes_quick sets max_iter 600: the default shown is the group's, not the root's 40000
    with pytest.raises(ConfigTypeError, match=r"default 600"):
        compose(["experiment=shapes_quick", "solver.max_iter=x"])


def test_valid_overrides_pass_and_ints_become_floats():
    cfg = compose([
        "model=retinanet",
        "solver.base_lr=1",                            # int for a float: 1.0
        "solver.max_iter=7",
        "model.pixel_mean=[1,2,3]",                    # ints in a float list
        "input.crop.size=[384,600]",
        "model.anchor_generator.sizes=[32,64]",        # flat list where the default is nested (broadcast)
        "model.resnets.deform_on_per_stage=[false,true,false,true]",
        "solver.weight_decay_bias=0.0",                # default null: anything
        "dataloader.train_iters_per_epoch=5",
        "paths.output_dir=/tmp/x",
        "model.weights=null",                          # null for any key
        "logger.tensorboard.version=3",                # a number where a string is the default
        "trainer.devices=auto", "trainer.precision=16-mixed",  # Lightning's polymorphic kwargs: not checked
        "callbacks.precise_bn=null",                   # a _target_ node removed
        "input.augmentations_train=[{_target_: detlightning.data.transforms.RandomFlip}]",
        "solver.checkpoint_period=${solver.max_iter}",  # an interpolation of the right type
        "+lazy.train.max_iter=100",                    # new keys have no default
        "~callbacks.lr_logger",
    ])  # fmt: skip
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.checkpoint_period == 7 and cfg.model.pixel_mean == [1, 2, 3]
    assert cfg.trainer.precision == "16-mixed" and cfg.callbacks.precise_bn is None


def test_setup_cfg_checks_a_composed_config():
    """The @hydra.main path: setup_cfg gets a composed config and the command line's overrides."""
    overrides = ["model=mask_rcnn", "model.roi_heads.num_classes=three"]
    cfg = compose_without_checks(overrides)
    with pytest.raises(ConfigTypeError, match=r"model\.roi_heads\.num_classes: expected an int"):
        setup_cfg(cfg, overrides=overrides)
    with pytest.raises(ConfigTypeError, match=r"solver\.max_iter"):
        setup_cfg(["solver.max_iter=abc"])


def test_train_script_fails_at_compose_time(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "dataloader.ims_per_batch=2.5",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "dataloader.ims_per_batch: expected an int, got float 2.5" in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()
