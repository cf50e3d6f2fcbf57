"""LazyConfig / LazyCall / instantiate: detectron2's Python config files on OmegaConf."""
from __future__ import annotations

import textwrap

import pytest
from omegaconf import DictConfig

from detlightning.config import LazyCall as L
from detlightning.config import LazyConfig, instantiate
from detlightning.layers import ShapeSpec
from detlightning.modeling.backbone.fpn import LastLevelP6P7


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_lazy_call_records_the_call_and_instantiate_makes_it_innermost_first():
    node = L(LastLevelP6P7)(in_channels=L(ShapeSpec)(channels=4).channels, out_channels=8)
    assert isinstance(node, DictConfig) and node._target_ is LastLevelP6P7
    node.out_channels = 6  # edit before building
    block = instantiate(node)
    assert isinstance(block, LastLevelP6P7) and block.p6.out_channels == 6 and block.p6.in_channels == 4
    nested = instantiate({"_target_": "detlightning.layers.ShapeSpec", "channels": 3, "height": "${.channels}"})
    assert nested == ShapeSpec(channels=3, height=None) or nested.channels == 3
    # lists are instantiated item by item; a mapping without _target_ is returned as it is
    assert instantiate([L(ShapeSpec)(channels=1), 2]) == [ShapeSpec(channels=1), 2]
    plain = {"a": L(ShapeSpec)(channels=1)}
    assert instantiate(plain) is plain


def test_instantiate_resolves_interpolations_and_names_the_failing_node():
    cfg = DictConfig(
        {"width": 5, "spec": L(ShapeSpec)(channels="${..width}"), "bad": L(ShapeSpec)(chanels=1)},
        flags={"allow_objects": True},
    )
    assert instantiate(cfg.spec) == ShapeSpec(channels=5)
    with pytest.raises(TypeError, match="chanels") as info:
        instantiate(cfg.bad)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert not hasattr(info.value, "add_note") or "ShapeSpec" in notes


def test_load_executes_the_file_with_relative_imports_of_sibling_config_files(tmp_path):
    _write(
        tmp_path / "common" / "base.py",
        """
        from detlightning.config import LazyCall as L
        from detlightning.layers import ShapeSpec
        spec = L(ShapeSpec)(channels=8)
        train = dict(max_iter=100, amp=dict(enabled=False))
        _private = dict(x=1)
        """,
    )
    main = _write(
        tmp_path / "exp" / "main.py",
        """
        from ..common.base import spec, train
        from ..common import base
        train.max_iter = 5            # dicts of imported config files are configs: attribute access works
        other = base.spec             # a fresh execution of the file: not the same object as `spec`
        other.channels = 2
        not_a_config = 3
        """,
    )
    cfg = LazyConfig.load(main)
    assert sorted(cfg) == ["other", "spec", "train"]  # public dicts/configs only
    assert cfg.train.max_iter == 5 and cfg.spec.channels == 8 and cfg.other.channels == 2
    assert LazyConfig.load(main, "train").max_iter == 5
    assert [c.channels for c in LazyConfig.load(main, ("spec", "other"))] == [8, 2]


def test_a_relative_import_of_a_missing_config_file_names_both_files(tmp_path):
    main = _write(tmp_path / "main.py", "from .nothing_here import model\n")
    with pytest.raises(ImportError, match=r"main\.py.*nothing_here\.py"):
        LazyConfig.load(main)
    with pytest.raises(FileNotFoundError, match="absent.py"):
        LazyConfig.load(tmp_path / "absent.py")


def test_save_and_load_round_trip_through_yaml(tmp_path):
    cfg = DictConfig(
        {"block": L(LastLevelP6P7)(in_channels=4, out_channels="${..width}"), "width": 6, "steps": [1, 2]},
        flags={"allow_objects": True},
    )
    LazyConfig.save(cfg, tmp_path / "cfg.yaml")
    text = (tmp_path / "cfg.yaml").read_text()
    assert "_target_: detlightning.modeling.backbone.LastLevelP6P7" in text  # callables saved by import path
    back = LazyConfig.load(tmp_path / "cfg.yaml")
    assert back.block.out_channels == 6 and list(back.steps) == [1, 2]
    assert instantiate(back.block).p7.out_channels == 6


def test_save_falls_back_to_a_pickle_for_values_yaml_cannot_hold(tmp_path, caplog):
    cfg = DictConfig({"block": LastLevelP6P7}, flags={"allow_objects": True})  # a class as a plain value
    LazyConfig.save(cfg, tmp_path / "cfg.yaml")
    assert (tmp_path / "cfg.yaml.pkl").is_file() and not (tmp_path / "cfg.yaml").exists()
    assert "pickling" in caplog.text
    # a lambda can be neither: the save reports it and does not raise (a training run must not die on it)
    LazyConfig.save(DictConfig({"f": lambda c: c}, flags={"allow_objects": True}), tmp_path / "lambda.yaml")
    assert "cannot be saved" in caplog.text


def test_apply_overrides_takes_hydra_syntax_and_rejects_typos_with_the_key_named():
    cfg = DictConfig(
        {"train": {"max_iter": 10, "init": None}, "spec": L(ShapeSpec)(channels=2), "steps": [1]},
        flags={"allow_objects": True},
    )
    LazyConfig.apply_overrides(cfg, ["train.max_iter=5", "steps=[3,4]", "spec.height=7", "+train.new=1"])
    assert cfg.train.max_iter == 5 and list(cfg.steps) == [3, 4] and cfg.spec.height == 7 and cfg.train.new == 1
    LazyConfig.apply_overrides(cfg, ["train.init.path=x"])  # a None value may become a config
    assert cfg.train.init.path == "x"
    with pytest.raises(KeyError, match=r"train\.max_iters.*\+train\.max_iters"):
        LazyConfig.apply_overrides(cfg, ["train.max_iters=5"])
    with pytest.raises(KeyError, match="ShapeSpec has no argument 'heigth'"):
        LazyConfig.apply_overrides(cfg, ["spec.heigth=7"])
    with pytest.raises(KeyError, match="'steps' is not a config node"):
        LazyConfig.apply_overrides(cfg, ["steps.x=1"])


def test_to_py_prints_python_that_rebuilds_the_config():
    cfg = DictConfig(
        {"block": L(LastLevelP6P7)(in_channels=4, out_channels=5), "train": {"max_iter": 3, "pair": (1, 2)}},
        flags={"allow_objects": True},
    )
    code = LazyConfig.to_py(cfg)
    assert "L(detlightning.modeling.backbone.LastLevelP6P7)(in_channels=4, out_channels=5)" in code
    namespace = {"cfg": DictConfig({}, flags={"allow_objects": True})}
    exec(code, namespace)
    rebuilt = namespace["cfg"]
    assert rebuilt.block._target_ is LastLevelP6P7 and rebuilt.train.max_iter == 3
    assert instantiate(rebuilt.block).p6.out_channels == 5


def test_model_zoo_serves_lazy_configs_by_name():
    from detlightning import model_zoo

    names = model_zoo.list_configs()
    assert "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py" in names
    assert not any(n.startswith("common/") for n in names)
    cfg = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", trained=True)
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    url = cfg.train.init_checkpoint
    assert url.endswith("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ/42047764/model_final_bb69de.pkl")
    assert cfg.train.max_iter == 184375 and cfg.dataloader.train.total_batch_size == 64
    assert cfg.model.backbone.bottom_up.stages.norm == "SyncBN"
    vitdet = "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"
    url = model_zoo.get_checkpoint_url(vitdet)
    assert url.endswith("ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl")
    with pytest.raises(ValueError, match="LazyConfig"):
        model_zoo.get_hydra_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")


def test_every_shipped_lazy_config_loads_and_its_schedule_is_consistent():
    from detlightning import model_zoo

    for name in (n for n in model_zoo.list_configs() if n.endswith(".py")):
        cfg = model_zoo.get_config(name)
        assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg), name
        scheduler = cfg.lr_multiplier.scheduler
        if "num_updates" in scheduler and "ep_LSJ" in name:
            assert scheduler.num_updates == cfg.train.max_iter, name
            assert max(scheduler.milestones) < cfg.train.max_iter, name
