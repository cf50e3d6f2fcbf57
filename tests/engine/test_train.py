"""End-to-end: a few real training steps of tiny models through the engine and scripts/train.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detlightning.config import compose
from detlightning.engine import DetectionModule, evaluate, train

from .conftest import REPO_ROOT, tiny_overrides


def _metrics(out: Path) -> list[dict]:
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f]


def test_mask_rcnn_outputs(mask_rcnn_run) -> None:
    cfg, results, out = mask_rcnn_run
    # final evaluation: one entry per test dataset with COCO box and mask metrics
    assert list(results) == ["shapes_val"]
    assert {"bbox", "segm"} <= set(results["shapes_val"])
    assert {"AP", "AP50", "AP75"} <= set(results["shapes_val"]["bbox"])

    lines = _metrics(out)
    iters = [line["iteration"] for line in lines]
    assert iters == sorted(iters) and iters[0] == 1 and 3 in iters  # period 2: iterations 1 and 3
    train_line = next(line for line in lines if line["iteration"] == 1)
    for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "lr",
                "time", "data_time", "fast_rcnn/cls_accuracy", "max_mem"):
        assert key in train_line, key
    assert 0 < train_line["total_loss"] < 100 and 0 <= train_line["fast_rcnn/cls_accuracy"] <= 1
    assert 50 < train_line["max_mem"] < 64 * 1024  # MiB: the peak RSS of a process that imported torch
    assert any("bbox/AP" in line for line in lines)  # evaluation results join the metrics file

    ckpt = out / "checkpoints"
    names = set(os.listdir(ckpt))
    # detectron2-style .pth (iteration 1 = 2 iterations done) and the final one; Lightning .ckpt beside them
    assert {"model_0000001.pth", "model_final.pth", "last.ckpt", "model_0000002.ckpt", "model_0000004.ckpt"} <= names
    assert (ckpt / "last_checkpoint").read_text().strip() == "model_final.pth"
    pth = torch.load(ckpt / "model_final.pth", map_location="cpu", weights_only=True)
    assert pth["iteration"] == 3 and "roi_heads.box_predictor.cls_score.weight" in pth["model"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"total_loss", "loss_mask", "lr", "bbox/AP", "segm/AP"} <= set(tags["scalars"]), tags["scalars"]
    assert "predictions/0" in tags["images"]  # VisualizePredictions on the first validation images
    # vis_period=2: the model's training-batch images (EventStorage.put_image) reach TensorBoard
    steps = [e.step for e in acc.Images("Left: GT bounding boxes;  Right: Predicted proposals")]
    assert steps == [0, 2], steps
    assert any(tag.startswith("Left: mask prediction;") for tag in tags["images"]), tags["images"]
    assert (out / "config.yaml").is_file()


def test_load_from_checkpoint_roundtrip(mask_rcnn_run) -> None:
    cfg, _, out = mask_rcnn_run
    module = DetectionModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu")
    assert isinstance(module.model, torch.nn.Module) and type(module.model).__name__ == "GeneralizedRCNN"
    assert isinstance(module.hparams["cfg"], dict)
    final = torch.load(out / "checkpoints" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    state = module.model.state_dict()
    assert set(state) == set(final)
    for k, v in final.items():
        assert torch.equal(state[k], v), k
    # the rebuilt model predicts: eval mode on one real image
    from detlightning.data import DetectionDataModule

    dm = DetectionDataModule(module.cfg)
    batch = next(iter(dm.build_test_loader("shapes_val")))
    module.model.eval()
    with torch.no_grad():
        preds = module.predict_step(batch, 0)
    assert len(preds) == len(batch) and "instances" in preds[0]


def test_eval_only_reproduces_final_results(mask_rcnn_run, tmp_path: Path) -> None:
    cfg, results, out = mask_rcnn_run
    cfg2 = compose(
        tiny_overrides(Path(cfg.datasets.shapes.root))
        + [f"paths.output_dir={tmp_path}", f"model.weights={out / 'checkpoints' / 'model_final.pth'}", "eval_only=true"]
    )
    again = evaluate(cfg2)
    for task in ("bbox", "segm"):
        for k, v in results["shapes_val"][task].items():
            w = again["shapes_val"][task][k]
            assert (v != v and w != w) or v == pytest.approx(w), (task, k)


def test_resume_continues_from_last_checkpoint(mask_rcnn_run, tmp_path: Path) -> None:
    import shutil

    cfg, _, out = mask_rcnn_run
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)
    cfg2 = compose(
        tiny_overrides(Path(cfg.datasets.shapes.root))
        + [f"paths.output_dir={run_dir}", "resume=true", "solver.max_iter=6", "solver.checkpoint_period=100"]
    )
    train(cfg2)
    lines = _metrics(run_dir)
    # the first run wrote iterations <= 3; the resumed one starts at iteration 4 (not 0)
    new = [line["iteration"] for line in lines[len(_metrics(out)):] if "total_loss" in line]
    assert new and min(new) >= 4 and max(new) == 5
    assert torch.load(run_dir / "checkpoints" / "model_final.pth", weights_only=True)["iteration"] == 5


class _NaNLossModule(DetectionModule):
    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        forward = model.forward

        def nan_forward(batched_inputs):
            out = forward(batched_inputs)
            if model.training:
                out["loss_cls"] = out["loss_cls"] * float("nan")
            return out

        model.forward = nan_forward
        return model


def test_nan_loss_stops_with_named_error(shapes_root: Path, tmp_path: Path) -> None:
    cfg = compose(tiny_overrides(shapes_root, model="faster_rcnn") + [f"paths.output_dir={tmp_path}"])
    with pytest.raises(FloatingPointError, match=r"iteration=0.*loss_cls"):
        train(cfg, module_cls=_NaNLossModule)


def test_train_script_faster_rcnn_subprocess(shapes_root: Path, tmp_path: Path) -> None:
    """The real command line: Hydra composes, runs in hydra.run.dir, prints COCO metrics at the end."""
    run_dir = tmp_path / "hydra_run"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")] + tiny_overrides(shapes_root, "faster_rcnn") + [
        "solver.max_iter=2", f"hydra.run.dir={run_dir}", "logger=csv",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "copypaste: Task: bbox" in output and "copypaste: AP,AP50,AP75,APs,APm,APl" in output
    assert "segm" not in output.split("Final evaluation results")[-1]  # Faster R-CNN: boxes only
    assert (run_dir / "checkpoints" / "model_final.pth").is_file()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer=tpu_pod", ["trainer", "cpu", "ddp", "ddp_spawn"]),
        ("solver=lamb", ["solver", "sgd", "adamw"]),
        ("experiment=nope", ["experiment", "shapes_quick"]),
    ],
)
def test_unknown_group_option_lists_choices(override: str, expected: list[str]) -> None:
    with pytest.raises(Exception) as info:
        compose([override])
    for word in expected:
        assert word in str(info.value)


def test_unknown_key_fails() -> None:
    with pytest.raises(Exception, match="bogus_lr"):
        compose(["solver.bogus_lr=1"])


@pytest.mark.parametrize(
    ("name", "mask_on", "steps", "max_iter"),
    [
        ("mask_rcnn_R_50_FPN_1x", True, [60000, 80000], 90000),
        ("mask_rcnn_R_50_FPN_3x", True, [210000, 250000], 270000),
        ("faster_rcnn_R_50_FPN_1x", False, [60000, 80000], 90000),
        ("faster_rcnn_R_50_FPN_3x", False, [210000, 250000], 270000),
    ],
)
def test_model_zoo_presets(name: str, mask_on: bool, steps: list[int], max_iter: int) -> None:
    """Schedules of detectron2's model zoo (configs/COCO-*/..._R_50_FPN_{1x,3x}.yaml + Base-RCNN-FPN.yaml)."""
    cfg = compose([f"experiment={name}"])
    assert cfg.model.mask_on is mask_on
    assert list(cfg.solver.steps) == steps and cfg.solver.max_iter == max_iter
    assert cfg.solver.base_lr == 0.02 and cfg.dataloader.ims_per_batch == 16 and cfg.solver.optimizer == "SGD"
    assert cfg.solver.warmup_iters == 1000 and cfg.solver.warmup_factor == 0.001 and cfg.solver.weight_decay == 1e-4
    assert cfg.model.resnets.depth == 50 and cfg.model.backbone.name == "build_resnet_fpn_backbone"
    assert list(cfg.datasets.train) == ["coco_2017_train"] and list(cfg.datasets.test) == ["coco_2017_val"]
    assert cfg.model.weights == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


def test_default_predictor_matches_test_loader(mask_rcnn_run) -> None:
    from detlightning.data import DatasetCatalog, DetectionDataModule
    from detlightning.data.detection_utils import read_image
    from detlightning.engine import DefaultPredictor

    cfg, _, out = mask_rcnn_run
    cfg = cfg.copy()
    cfg.model.weights = str(out / "checkpoints" / "model_final.pth")
    predictor = DefaultPredictor(cfg)
    record = DatasetCatalog.get("shapes_val")[0]
    pred = predictor(read_image(record["file_name"], format="BGR"))["instances"]
    # the same image through the evaluation data path
    module = DetectionModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu")
    batch = next(iter(DetectionDataModule(module.cfg).build_test_loader("shapes_val")))
    module.model.eval()
    with torch.no_grad():
        ref = module.model([batch[0]])[0]["instances"]
    assert batch[0]["file_name"] == record["file_name"]
    assert pred.image_size == (record["height"], record["width"])
    assert torch.allclose(pred.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(pred.pred_classes, ref.pred_classes)


@pytest.mark.slow
def test_resume_after_process_killed_mid_run(shapes_root: Path, tmp_path: Path) -> None:
    """train.py killed (os._exit) after 3 of 6 steps, checkpoints every 2 steps; `resume=true` in the same run
    dir continues from step 2: step counter, LR schedule (scheduler state) and optimizer state come back, only
    the step after the checkpoint is redone, and metrics.json has each iteration once."""
    run_dir = tmp_path / "run"
    base = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")] + tiny_overrides(shapes_root, "faster_rcnn") + [
        "solver.max_iter=6", "solver.warmup_iters=2", "solver.warmup_factor=0.5", "solver.steps=[4]",
        "solver.base_lr=0.01", "solver.checkpoint_period=2", "callbacks.metrics_writer.period=1",
        f"hydra.run.dir={run_dir}", "logger=csv", "datasets.test=[]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))  # the callback lives in tests/
    killed = subprocess.run(
        base + ["+callbacks.kill._target_=tests.engine._kill.KillAtStep", "+callbacks.kill.step=3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert killed.returncode == 17, (killed.stdout + killed.stderr)[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and not (ckpts / "model_final.pth").exists()
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 and state["optimizer_states"][0]["state"]  # momentum buffers were saved
    first = _metrics(run_dir)
    assert [line["iteration"] for line in first] == [0, 1, 2]  # the kill came before iteration 3 was written

    resumed = subprocess.run(base + ["resume=true"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    lines = _metrics(run_dir)
    # iteration 2 (done after the checkpoint, before the kill) is redone; its first line was dropped on resume
    assert [line["iteration"] for line in lines] == [0, 1, 2, 3, 4, 5]
    # linear warmup over 2 iterations from 0.5x, then 0.01 until step 4, then 0.001: a restarted scheduler would
    # log the warmup LR 0.005 at iteration 2
    lrs = {line["iteration"]: line["lr"] for line in lines}
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.0075)
    assert [lrs[i] for i in (2, 3, 4, 5)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert torch.load(ckpts / "model_final.pth", weights_only=True)["iteration"] == 5


def test_primary_metric_is_first_box_ap() -> None:
    from detlightning.engine import primary_metric

    assert primary_metric({"a": {"segm": {"AP": 1.0}}, "b": {"bbox": {"AP": 2.5}}, "c": {"bbox": {"AP": 9.0}}}) == 2.5
    assert primary_metric({"a": {"sem_seg": {"mIoU": 50.0}}}) is None and primary_metric({}) is None
