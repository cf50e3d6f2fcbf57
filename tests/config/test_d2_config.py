"""detectron2 configs: CfgNode behaviour, yaml with _BASE_, conversion to our config, and detectron2 code snippets
that run with only their imports changed (same outputs as the Hydra-configured build)."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from detlightning.config import (
    D2_KEY_MAP,
    CfgNode,
    apply_d2_config,
    compose,
    get_d2_cfg,
    load_d2_config,
    to_detlightning_cfg,
    unsupported_d2_keys,
)
from detlightning.config.d2_compat import UnsupportedD2KeysWarning
from detlightning.layers import ShapeSpec
from detlightning.modeling import (
    Backbone,
    StandardROIHeads,
    build_backbone,
    build_model,
    build_proposal_generator,
    build_roi_heads,
)
from detlightning.modeling.proposal_generator.rpn import StandardRPNHead
from detlightning.structures import Boxes, ImageList, Instances
from tests._scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
D2_CONFIGS = REPO_ROOT / "tests" / "data" / "d2_configs"
MASK_YAML = D2_CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"
RETINA_YAML = D2_CONFIGS / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"
# the Hydra composition that is detectron2's mask_rcnn_R_50_FPN_3x model
MASK_HYDRA = ["model=mask_rcnn", "backbone=resnet50", "data=coco"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _d2_mask_cfg() -> CfgNode:
    cfg = get_d2_cfg()
    cfg.merge_from_file(str(MASK_YAML))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


# ------------------------------------------------------------------------------------------------ CfgNode
def test_cfgnode_defaults_attribute_access_clone_freeze_dump(tmp_path: Path) -> None:
    cfg = get_d2_cfg()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80 and cfg["MODEL"]["RPN"]["NMS_THRESH"] == 0.7
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.SOLVER.WEIGHT_DECAY_BIAS is None and cfg.VERSION == 2
    other = cfg.clone()
    other.MODEL.RPN.NMS_THRESH = 0.5
    assert cfg.MODEL.RPN.NMS_THRESH == 0.7  # clone is deep
    assert get_d2_cfg().MODEL.RPN.NMS_THRESH == 0.7  # every call is a fresh copy of the defaults

    other.freeze()
    assert other.is_frozen()
    with pytest.raises(AttributeError):
        other.SOLVER.BASE_LR = 1.0
    with pytest.raises(AttributeError, match="defrost"):
        other.merge_from_list(["SOLVER.BASE_LR", "1.0"])
    other.defrost()
    other.merge_from_list(["SOLVER.BASE_LR", "1.0"])
    assert other.SOLVER.BASE_LR == 1.0

    # dump() is yaml that merge_from_file reads back to the same config
    path = tmp_path / "dumped.yaml"
    path.write_text(other.dump())
    again = get_d2_cfg()
    again.merge_from_file(str(path))
    # (yaml has no tuples: nested tuples come back as lists, as in detectron2)
    def plain(node: CfgNode) -> dict:
        return {k: _as_plain(v) for k, v in node.flatten().items()}

    assert plain(again) == plain(other)
    assert again.SOLVER.BASE_LR == 1.0 and again.INPUT.MIN_SIZE_TRAIN == (800,)


def test_merge_from_list_parses_values_and_checks_types() -> None:
    cfg = get_d2_cfg()
    cfg.merge_from_list(["MODEL.WEIGHTS", "x.pth", "SOLVER.BASE_LR", "0.05", "INPUT.MIN_SIZE_TRAIN", "(512, 640)",
                         "MODEL.MASK_ON", "True", "DATASETS.TRAIN", "('a', 'b')"])
    assert cfg.MODEL.WEIGHTS == "x.pth" and cfg.SOLVER.BASE_LR == 0.05 and cfg.MODEL.MASK_ON is True
    assert cfg.INPUT.MIN_SIZE_TRAIN == (512, 640) and cfg.DATASETS.TRAIN == ("a", "b")
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_ITER"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])  # a string into an int key
    with pytest.raises(ValueError, match=r"MODEL\.ROI_HEADS\.NUM_CLASSES"):
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "[1, 2]"])
    with pytest.raises(KeyError, match=r"MODEL\.ROI_HEADS\.NUM_CLASES"):
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASES", "3"])
    with pytest.raises(ValueError, match="pairs"):
        cfg.merge_from_list(["MODEL.WEIGHTS"])
    assert cfg.SOLVER.MAX_ITER == 40000 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80  # failed merges changed nothing


def test_merge_from_file_follows_base_relative_to_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # _BASE_ is resolved against the including file, not the working directory
    cfg = get_d2_cfg()
    cfg.merge_from_file(str(MASK_YAML))
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"  # from Base-RCNN-FPN.yaml
    assert cfg.MODEL.MASK_ON is True and cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.SOLVER.STEPS == (210000, 250000) and cfg.SOLVER.BASE_LR == 0.02  # leaf wins, base fills in
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)

    retina = get_d2_cfg()
    retina.merge_from_file(str(RETINA_YAML))
    # Base-RetinaNet.yaml's !!python/object/apply:eval anchor sizes: three octave scales per level
    expected = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (32, 64, 128, 256, 512)]
    sizes = retina.MODEL.ANCHOR_GENERATOR.SIZES
    assert len(sizes) == 5 and all(len(level) == 3 for level in sizes)
    assert all(math.isclose(a, b, rel_tol=1e-12) for la, lb in zip(sizes, expected) for a, b in zip(la, lb))
    assert retina.MODEL.META_ARCHITECTURE == "RetinaNet" and retina.SOLVER.BASE_LR == 0.01


def test_merge_from_file_errors_name_the_key_and_file(tmp_path: Path) -> None:
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    cfg = get_d2_cfg()
    bad_key = write("bad_key.yaml", f'_BASE_: "{MASK_YAML}"\nMODEL:\n  RPN:\n    NMS_THRES: 0.5\n')
    with pytest.raises(KeyError, match=r"MODEL\.RPN\.NMS_THRES") as info:
        cfg.merge_from_file(bad_key)
    assert "bad_key.yaml" in str(info.value)
    with pytest.raises(ValueError, match=r"SOLVER\.IMS_PER_BATCH"):
        cfg.merge_from_file(write("bad_type.yaml", 'SOLVER:\n  IMS_PER_BATCH: "sixteen"\n'))
    with pytest.raises(FileNotFoundError, match="missing_base.yaml"):
        cfg.merge_from_file(write("child.yaml", '_BASE_: "missing_base.yaml"\n'))
    # Python tags: the arithmetic eval idiom only, and never arbitrary code
    with pytest.raises(ValueError, match="allow_unsafe"):
        cfg.merge_from_file(write("unsafe.yaml", 'OUTPUT_DIR: !!python/object/apply:os.getcwd []\n'))
    with pytest.raises(ValueError, match="__import__"):
        expression = "OUTPUT_DIR: !!python/object/apply:eval [\"__import__('os').getcwd()\"]\n"
        cfg.merge_from_file(write("eval.yaml", expression))
    with pytest.raises(ValueError, match="VERSION 1"):
        cfg.merge_from_file(write("old.yaml", "VERSION: 1\n"))
    assert cfg == get_d2_cfg()  # nothing was merged by the failing files


# --------------------------------------------------------------------------------------------- conversion
def test_key_map_covers_every_detectron2_key_and_targets_exist() -> None:
    d2_keys = set(get_d2_cfg().flatten())
    assert set(D2_KEY_MAP) == d2_keys
    ours = compose(["data=coco"])
    for d2_key, target in D2_KEY_MAP.items():
        if target is not None:
            assert OmegaConf.select(ours, target, default="<missing>") != "<missing>", (d2_key, target)
    assert D2_KEY_MAP["MODEL.ROI_HEADS.NUM_CLASSES"] == "model.roi_heads.num_classes"
    assert D2_KEY_MAP["SOLVER.IMS_PER_BATCH"] == "dataloader.ims_per_batch"
    assert D2_KEY_MAP["TEST.EVAL_PERIOD"] == "solver.eval_period"
    assert D2_KEY_MAP["TEST.AUG.ENABLED"] == "test.aug.enabled"
    assert D2_KEY_MAP["FLOAT32_PRECISION"] is None


def _as_plain(value):
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value


def test_every_mapped_value_arrives() -> None:
    d2 = _d2_mask_cfg()
    # non-default values everywhere we can: each must land on its mapped key
    d2.merge_from_list(["MODEL.RPN.NMS_THRESH", "0.65", "SOLVER.IMS_PER_BATCH", "8", "TEST.EVAL_PERIOD", "500",
                        "INPUT.FORMAT", "RGB", "SEED", "7", "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", "/tmp/out",
                        "CUDNN_BENCHMARK", "True", "TEST.PRECISE_BN.ENABLED", "True"])
    out = to_detlightning_cfg(d2)
    OmegaConf.resolve(out)  # every interpolation still resolves
    for key, value in d2.flatten().items():
        target = D2_KEY_MAP[key]
        if target is not None:
            got = OmegaConf.select(out, target)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == _as_plain(value), (key, target, got, value)
    assert out.model.meta_architecture == "GeneralizedRCNN" and out.model.mask_on
    assert out.dataloader.ims_per_batch == 8 and out.solver.eval_period == 500 and out.paths.output_dir == "/tmp/out"
    assert out.trainer.benchmark is True and out.callbacks.precise_bn.enabled is True and out.seed == 7
    # the structure follows the file: a RetinaNet yaml composes the retinanet model
    retina = to_detlightning_cfg(_merge(RETINA_YAML))
    assert retina.model.meta_architecture == "RetinaNet"
    assert retina.model.backbone.name == "build_retinanet_resnet_fpn_backbone"


def _merge(path: Path, *overrides: str) -> CfgNode:
    cfg = get_d2_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *overrides])
    return cfg


def test_model_zoo_yaml_equals_our_experiment_preset() -> None:
    """The converted detectron2 file and our Hydra preset for the same model-zoo entry agree on every setting."""
    converted = to_detlightning_cfg(_d2_mask_cfg())
    preset = compose(["experiment=mask_rcnn_R_50_FPN_3x"])
    for section in ("model", "input", "datasets", "solver", "test"):
        assert OmegaConf.to_container(converted[section]) == OmegaConf.to_container(preset[section]), section
    assert converted.dataloader.ims_per_batch == preset.dataloader.ims_per_batch == 16


def test_unsupported_non_default_keys_are_reported_by_name() -> None:
    d2 = _d2_mask_cfg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model-zoo file itself uses nothing unsupported: no warning
        to_detlightning_cfg(d2, strict=True)
    d2.merge_from_list(["FLOAT32_PRECISION", "high", "SOLVER.REFERENCE_WORLD_SIZE", "8", "VIS_PERIOD", "20"])
    d2.MODEL.MY_HEAD = CfgNode({"DIM": 3})  # a project-specific key (add_xxx_config style)
    assert set(unsupported_d2_keys(d2)) == {"FLOAT32_PRECISION", "SOLVER.REFERENCE_WORLD_SIZE", "MODEL.MY_HEAD.DIM"}
    with pytest.warns(UnsupportedD2KeysWarning) as record:
        out = to_detlightning_cfg(d2)
    message = str(record[0].message)
    for key in ("FLOAT32_PRECISION", "SOLVER.REFERENCE_WORLD_SIZE", "MODEL.MY_HEAD.DIM"):
        assert key in message
    assert "SOLVER.NUM_DECAYS" not in message  # at its default: nothing to report
    assert out.model.mask_on and out.vis_period == 20  # everything else converted
    with pytest.raises(ValueError, match=r"FLOAT32_PRECISION[\s\S]*SOLVER\.REFERENCE_WORLD_SIZE"):
        to_detlightning_cfg(d2, strict=True)
    with pytest.raises(TypeError, match="CfgNode"):
        to_detlightning_cfg({"MODEL": {}})


def test_load_d2_config_with_overrides() -> None:
    cfg = load_d2_config(MASK_YAML, ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu"])
    assert cfg.model.roi_heads.num_classes == 3 and cfg.solver.max_iter == 270000 and cfg.model.device == "cpu"


def test_apply_d2_config_keeps_run_settings(tmp_path: Path) -> None:
    hydra_cfg = compose(["solver.base_lr=0.5", "paths.output_dir=/runs/a", "trainer=cpu", "logger=none",
                         "datasets.shapes.num_train=8"])
    out = apply_d2_config(hydra_cfg, MASK_YAML, keep=["solver.base_lr"])
    assert out.solver.base_lr == 0.5  # kept: given on the command line
    assert out.solver.max_iter == 270000 and out.model.mask_on and out.datasets.train == ["coco_2017_train"]
    assert out.model.roi_heads.num_classes == 80 and out.dataloader.ims_per_batch == 16
    # run settings stay as composed; OUTPUT_DIR and MODEL.DEVICE are at detectron2's defaults in the file
    assert out.paths.output_dir == "/runs/a" and out.model.device == "cpu" and out.trainer.accelerator == "cpu"
    assert OmegaConf.to_container(out.logger) == OmegaConf.to_container(hydra_cfg.logger)
    assert out.datasets.shapes.num_train == 8  # no detectron2 counterpart: the Hydra value stays
    assert hydra_cfg.solver.max_iter == 40000  # the input config is not modified
    # a non-default OUTPUT_DIR in the file is honoured
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{MASK_YAML}"\nOUTPUT_DIR: "/runs/from_d2"\n')
    assert apply_d2_config(hydra_cfg, child, keep=[]).paths.output_dir == "/runs/from_d2"


def test_apply_d2_config_under_hydra_keeps_command_line_keys() -> None:
    """Inside a Hydra app (scripts/train.py) the command-line keys win over the detectron2 file by default."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    overrides = ["solver.base_lr=0.5", "model=retinanet", f"d2_config={MASK_YAML}"]
    with initialize_config_module(config_module="detlightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]  # as in the config a @hydra.main function receives
        out = apply_d2_config(cfg)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert out.solver.base_lr == 0.5  # from the command line
    assert out.solver.max_iter == 270000  # from the file
    assert out.model.meta_architecture == "GeneralizedRCNN" and out.model.mask_on  # the file decides the model


# --------------------------------------------------------- detectron2 snippets: only the imports are changed
def _fpn_shapes() -> dict[str, ShapeSpec]:
    return {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}


def _features(height: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"p{i}": torch.randn(1, 256, math.ceil(height / 2**i), math.ceil(width / 2**i), generator=g)
            for i in range(2, 7)}


def test_snippet_rpn_from_build_proposal_generator() -> None:
    cfg = _d2_mask_cfg()  # cfg = get_cfg(); cfg.merge_from_file(...)
    rpn = build_proposal_generator(cfg, _fpn_shapes())
    reference = build_proposal_generator(compose(MASK_HYDRA), _fpn_shapes())
    reference.load_state_dict(rpn.state_dict())
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    features = _features(64, 96)
    rpn.eval(), reference.eval()
    with torch.no_grad():
        got, _ = rpn(images, features)
        want, _ = reference(images, features)
    assert len(got[0]) > 0
    assert torch.equal(got[0].proposal_boxes.tensor, want[0].proposal_boxes.tensor)
    assert torch.equal(got[0].objectness_logits, want[0].objectness_logits)
    # a @configurable component takes the CfgNode too
    head = StandardRPNHead(cfg, list(_fpn_shapes().values()))
    assert head.anchor_deltas.out_channels == 12  # 3 anchors x 4 deltas
    # and so does build_backbone (a ResNet-18 FPN keeps it cheap)
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    backbone = build_backbone(cfg)
    assert isinstance(backbone, Backbone) and set(backbone.output_shape()) == {"p2", "p3", "p4", "p5", "p6"}
    assert backbone.bottom_up.res2[0].conv1.weight.shape == (64, 64, 3, 3)  # BasicBlock: depth 18 arrived


def test_snippet_standard_roi_heads_from_build_roi_heads() -> None:
    cfg = _d2_mask_cfg()
    # untrained weights: keep low-scoring detections to compare, but few (the mask head runs on each)
    cfg.merge_from_list(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10"])
    shapes = {k: v for k, v in _fpn_shapes().items() if k != "p6"}
    heads = build_roi_heads(cfg, shapes)
    assert isinstance(heads, StandardROIHeads) and heads.mask_on
    reference = build_roi_heads(
        compose(MASK_HYDRA + ["model.roi_heads.score_thresh_test=0.0", "test.detections_per_image=10"]), shapes
    )
    reference.load_state_dict(heads.state_dict())
    features = {k: v for k, v in _features(64, 96).items() if k != "p6"}
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(20, 2, generator=g) * torch.tensor([70.0, 40.0])
    wh = 8 + torch.rand(20, 2, generator=g) * 20
    proposals = Instances((64, 96))
    proposals.proposal_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    proposals.objectness_logits = torch.randn(20, generator=g)
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    heads.eval(), reference.eval()
    with torch.no_grad():
        got, _ = heads(images, features, [proposals])
        want, _ = reference(images, features, [proposals])
    assert len(got[0]) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = got[0].get(field), want[0].get(field)
        a, b = (a.tensor, b.tensor) if isinstance(a, Boxes) else (a, b)
        assert torch.equal(a, b), field


def test_snippet_model_from_model_zoo_yaml() -> None:
    from detlightning import model_zoo

    cfg = get_d2_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10"])
    model = build_model(cfg)
    reference = build_model(compose(["experiment=mask_rcnn_R_50_FPN_3x", "model.roi_heads.score_thresh_test=0.0",
                                     "test.detections_per_image=10", "model.device=cpu"]))
    state = model.state_dict()
    for key, value in state.items():  # damp the untrained ResNet (identity frozen BN) so activations stay finite
        if key.startswith("backbone.bottom_up") and key.endswith("norm.weight"):
            value.fill_(0.3)
    model.load_state_dict(state)
    reference.load_state_dict(state)
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    inputs = [{"image": image, "height": 96, "width": 128}]
    model.eval(), reference.eval()
    with torch.no_grad():
        got = model(inputs)[0]["instances"]
        want = reference(inputs)[0]["instances"]
    assert len(got) == 10
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_masks, want.pred_masks)


# ------------------------------------------------------------ detectron2 model-zoo yaml -> detectron2's model
@pytest.mark.parametrize(
    ("yaml_path", "arch"), [(MASK_YAML, "mask_rcnn_R_50_FPN"), (RETINA_YAML, "retinanet_R_50_FPN")],
    ids=["mask_rcnn_R_50_FPN_3x", "retinanet_R_50_FPN_1x"],
)
def test_converted_model_has_detectron2_state_dict(compat_dir: Path, yaml_path: Path, arch: str) -> None:
    manifest = json.loads((compat_dir / arch / "manifest.json").read_text())
    model = build_model(load_d2_config(yaml_path, ["MODEL.DEVICE", "cpu"]))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: list(v) for k, v in manifest["shapes"].items()}
    assert sorted(set(shapes) ^ set(expected)) == []
    assert shapes == expected


# --------------------------------------------------------------------------- scripts/train.py d2_config=...
def test_train_script_runs_from_d2_yaml(tmp_path: Path) -> None:
    train_script = load_script("train")
    out = tmp_path / "run"
    cfg = compose([
        f"d2_config={D2_CONFIGS / 'tiny_shapes_mask_rcnn.yaml'}",
        f"datasets.shapes.root={tmp_path / 'shapes'}", "datasets.shapes.num_train=8", "datasets.shapes.num_val=4",
        "datasets.shapes.image_size=64", "trainer=cpu", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "callbacks.metrics_writer.period=1",
        "logger=none", f"paths.output_dir={out}",
    ])
    results = train_script.run(cfg)
    assert list(results) == ["shapes_val"] and {"bbox", "segm"} <= set(results["shapes_val"])
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train_lines = [line for line in lines if "total_loss" in line]
    assert [line["iteration"] for line in train_lines] == [0, 1, 2]  # SOLVER.MAX_ITER: 3 from the yaml
    assert all("loss_mask" in line for line in train_lines)  # MODEL.MASK_ON from the yaml
    final = torch.load(out / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    # RESNETS.DEPTH 18 / RES2_OUT_CHANNELS 64, FPN.OUT_CHANNELS 32, NUM_CLASSES 3 from the detectron2 file
    assert final["backbone.bottom_up.res2.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert final["backbone.fpn_output2.weight"].shape[0] == 32
    assert final["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4
    assert os.path.isfile(out / "config.yaml")

    # scripts/eval.py reads the same detectron2 yaml and reproduces the final box AP from model_final.pth
    import subprocess
    import sys

    cmd = [
        sys.executable, str(REPO_ROOT / "scripts" / "eval.py"),
        f"d2_config={D2_CONFIGS / 'tiny_shapes_mask_rcnn.yaml'}",
        f"model.weights={out / 'checkpoints' / 'model_final.pth'}", f"datasets.shapes.root={tmp_path / 'shapes'}",
        "datasets.shapes.num_train=8", "datasets.shapes.num_val=4", "datasets.shapes.image_size=64", "trainer=cpu",
        "trainer.enable_progress_bar=false", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = proc.stdout + proc.stderr
    # the yaml's architecture was built: the checkpoint fits it exactly
    assert "Loading checkpoint from" in log
    assert "incompatible shapes" not in log and "not found in the checkpoint" not in log
    ap = results["shapes_val"]["bbox"]["AP"]
    assert f"Final evaluation results, shapes_val: bbox/AP {ap:.2f}" in log
