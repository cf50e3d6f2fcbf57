"""detectron2's training API with only the import renamed: the Colab tutorial's flow, a tools/train_net.py-style
script (argument parser, launch, --resume, --eval-only, KEY VALUE opts), and a user's HookBase inside the loop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detlightning import model_zoo
from detlightning.config import get_cfg
from detlightning.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detlightning.data.datasets import register_shapes
from detlightning.engine import DefaultPredictor, DefaultTrainer
from detlightning.engine.train_loop import HookBase
from detlightning.evaluation import COCOEvaluator, inference_on_dataset
from detlightning.utils.visualizer import Visualizer

from .conftest import REPO_ROOT

SMALL = [  # what a CPU test changes from the model-zoo file: image sizes, ROI batch, iterations
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 100, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 100,
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.NORM", "BN", "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50, "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "DATALOADER.NUM_WORKERS", 0,
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A user dataset registered the tutorial's way: a function returning list[dict], plus its metadata."""
    root = tmp_path_factory.mktemp("d2_flow")
    register_shapes("d2flow", root=str(root), num_train=6, num_val=3, image_size=64, replace=True)
    for split in ("train", "val"):
        name = f"user_{split}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda s=split: DatasetCatalog.get(f"d2flow_{s}"))
            MetadataCatalog.get(name).set(thing_classes=["circle", "triangle", "square"])
    return "user"


def _tutorial_cfg(out: Path, prefix: str):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.DATASETS.TRAIN = (f"{prefix}_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.WEIGHTS = ""  # the tutorial starts from model-zoo weights; offline we start from scratch
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.00025
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = []
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in SMALL])
    cfg.OUTPUT_DIR = str(out)
    return cfg


def test_colab_tutorial_flow(tiny_dataset: str, tmp_path: Path) -> None:
    cfg = _tutorial_cfg(tmp_path / "output", tiny_dataset)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 3

    lines = [json.loads(x) for x in (tmp_path / "output" / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "total_loss" in x][-1] == 2 and "lr" in lines[-1]
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")  # where detectron2 writes it
    assert os.path.isfile(cfg.MODEL.WEIGHTS)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    predictor = DefaultPredictor(cfg)
    record = DatasetCatalog.get(f"{tiny_dataset}_val")[0]
    from detlightning.data.detection_utils import read_image

    im = read_image(record["file_name"], format="BGR")
    outputs = predictor(im)
    v = Visualizer(im[:, :, ::-1], metadata=MetadataCatalog.get(f"{tiny_dataset}_train"), scale=0.5)
    out = v.draw_instance_predictions(outputs["instances"].to("cpu"))
    assert out.get_image().shape == (im.shape[0] // 2, im.shape[1] // 2, 3)

    evaluator = COCOEvaluator(f"{tiny_dataset}_val", output_dir=str(tmp_path / "eval"))
    val_loader = build_detection_test_loader(cfg, f"{tiny_dataset}_val")
    results = inference_on_dataset(predictor.model, val_loader, evaluator)
    assert "bbox" in results and "segm" in results and np.isfinite(results["bbox"]["AP"])


class _Recorder(HookBase):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def before_train(self) -> None:
        self.events.append(("before_train", self.trainer.iter))

    def before_step(self) -> None:
        self.events.append(("before_step", self.trainer.iter))

    def after_step(self) -> None:
        assert "total_loss" in self.trainer.storage.latest()
        self.events.append(("after_step", self.trainer.iter))

    def after_train(self) -> None:
        self.events.append(("after_train", self.trainer.iter))


def test_user_hook_runs_inside_the_lightning_loop(tiny_dataset: str, tmp_path: Path) -> None:
    cfg = _tutorial_cfg(tmp_path / "out", tiny_dataset)
    trainer = DefaultTrainer(cfg)
    recorder = _Recorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert recorder.events == [
        ("before_train", 0),
        ("before_step", 0), ("after_step", 0),
        ("before_step", 1), ("after_step", 1),
        ("before_step", 2), ("after_step", 2),
        ("after_train", 3),
    ]


TRAIN_NET = textwrap.dedent('''
    """tools/train_net.py as detectron2 users write it, with only the import renamed."""
    import os

    from detlightning.config import get_cfg
    from detlightning.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detlightning.evaluation import COCOEvaluator
    from detlightning.checkpoint import DetectionCheckpointer


    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            return COCOEvaluator(dataset_name, output_dir=output_folder)


    def load_config(args):
        """The yaml, then the command-line KEY VALUE pairs; frozen, as detectron2 scripts leave it."""
        config = get_cfg()
        config.merge_from_file(args.config_file)
        config.merge_from_list(args.opts)
        config.freeze()
        default_setup(config, args)
        return config


    def evaluate_only(config, args):
        net = Trainer.build_model(config)
        checkpointer = DetectionCheckpointer(net, save_dir=config.OUTPUT_DIR)
        checkpointer.resume_or_load(config.MODEL.WEIGHTS, resume=args.resume)
        metrics = Trainer.test(config, net)
        print("EVAL_ONLY_AP", metrics["bbox"]["AP"])
        return metrics


    def main(args):
        config = load_config(args)
        if args.eval_only:
            return evaluate_only(config, args)
        runner = Trainer(config)
        runner.resume_or_load(resume=args.resume)
        print("START_ITER", runner.start_iter)
        return runner.train()


    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
''')


@pytest.mark.slow
def test_train_net_script_trains_resumes_and_evaluates(tmp_path: Path) -> None:
    script = tmp_path / "train_net.py"
    script.write_text(TRAIN_NET)
    yaml = REPO_ROOT / "tests" / "data" / "d2_configs" / "tiny_shapes_mask_rcnn.yaml"
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", DETLIGHTNING_DATASETS=str(tmp_path / "datasets"),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))

    def run(*extra: str) -> str:
        cmd = [sys.executable, str(script), "--config-file", str(yaml), "--num-gpus", "1", *extra,
               "OUTPUT_DIR", str(out), "TEST.EVAL_PERIOD", "0"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc.stdout + proc.stderr

    log = run("SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1")
    assert "START_ITER 0" in log and "Evaluation results for shapes_val" in log
    assert {"model_0000000.pth", "model_final.pth", "last_checkpoint", "metrics.json", "config.yaml"} <= set(
        os.listdir(out)
    )
    log = run("--resume", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1")
    assert "START_ITER 2" in log  # model_final.pth holds iteration 1: training continues at 2
    iters = [json.loads(x)["iteration"] for x in (out / "metrics.json").read_text().splitlines()
             if "total_loss" in json.loads(x)]
    assert iters[-1] == 3
    log = run("--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert "EVAL_ONLY_AP" in log


# ------------------------------------------------------- research code written on detectron2, import renamed
def _research_project():
    """A project's own config keys, backbone, mask head and mapper, registered the detectron2 way."""
    import torch
    from torch import nn

    from detlightning.config import CfgNode, configurable
    from detlightning.data import DatasetMapper
    from detlightning.layers import ShapeSpec
    from detlightning.modeling import BACKBONE_REGISTRY, ROI_MASK_HEAD_REGISTRY, Backbone
    from detlightning.modeling.roi_heads.mask_head import BaseMaskRCNNHead

    def add_myproj_config(cfg):
        cfg.MODEL.MY_BACKBONE = CfgNode()
        cfg.MODEL.MY_BACKBONE.DEPTH = 3
        cfg.MODEL.MY_BACKBONE.WIDTH = 16
        cfg.MODEL.MY_MASK_HEAD = CfgNode()
        cfg.MODEL.MY_MASK_HEAD.HIDDEN = 8
        cfg.INPUT.MY_GRAYSCALE = True

    class MyBackbone(Backbone):
        def __init__(self, cfg, input_shape: ShapeSpec):
            super().__init__()
            width, depth = cfg.MODEL.MY_BACKBONE.WIDTH, cfg.MODEL.MY_BACKBONE.DEPTH
            layers, ch = [], input_shape.channels
            for _ in range(depth):  # each conv halves the resolution: stride 2 ** depth
                layers += [nn.Conv2d(ch, width, 3, stride=2, padding=1), nn.ReLU()]
                ch = width
            self.body = nn.Sequential(*layers)
            self._stride = 2**depth

        def forward(self, x):
            return {"feat": self.body(x)}

        def output_shape(self):
            return {"feat": ShapeSpec(channels=self.body[-2].out_channels, stride=self._stride)}

    class PointRendLikeMaskHead(BaseMaskRCNNHead):
        @configurable
        def __init__(self, input_shape: ShapeSpec, *, hidden: int, num_classes: int, **kwargs):
            super().__init__(**kwargs)
            self.fc = nn.Conv2d(input_shape.channels, hidden, 1)
            self.predictor = nn.Conv2d(hidden, num_classes, 1)

        @classmethod
        def from_config(cls, cfg, input_shape):
            ret = super().from_config(cfg, input_shape)  # the built-in part reads the same CfgNode
            ret.update(input_shape=input_shape, hidden=cfg.MODEL.MY_MASK_HEAD.HIDDEN,
                       num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
            return ret

        def layers(self, x):
            return nn.functional.interpolate(self.predictor(torch.relu(self.fc(x))), scale_factor=2.0)

    class GrayMapper(DatasetMapper):
        @classmethod
        def from_config(cls, cfg, is_train: bool = True):
            ret = super().from_config(cfg, is_train)
            ret["gray"] = cfg.INPUT.MY_GRAYSCALE
            return ret

        @configurable
        def __init__(self, *, gray: bool, **kwargs):
            super().__init__(**kwargs)
            self.gray = gray

        def __call__(self, dataset_dict):
            out = super().__call__(dataset_dict)
            if self.gray:
                out["image"] = out["image"].float().mean(0, keepdim=True).expand(3, -1, -1).contiguous()
            return out

    for registry, cls in ((BACKBONE_REGISTRY, MyBackbone), (ROI_MASK_HEAD_REGISTRY, PointRendLikeMaskHead)):
        if cls.__name__ not in registry:
            registry.register(cls)
    return add_myproj_config, GrayMapper


def test_research_project_components_train_and_infer(tiny_dataset: str, tmp_path: Path) -> None:
    import torch

    from detlightning.data import build_detection_train_loader

    add_myproj_config, gray_mapper = _research_project()
    cfg = _tutorial_cfg(tmp_path / "proj", tiny_dataset)
    add_myproj_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "MyBackbone"
    cfg.MODEL.RPN.IN_FEATURES = ["feat"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["feat"]
    cfg.MODEL.ROI_MASK_HEAD.NAME = "PointRendLikeMaskHead"
    cfg.SOLVER.MAX_ITER = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0

    class Trainer(DefaultTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return build_detection_train_loader(cfg, mapper=gray_mapper(cfg, True))

    trainer = Trainer(cfg)
    assert type(trainer.model.backbone).__name__ == "MyBackbone" and len(trainer.model.backbone.body) == 6
    assert trainer.model.roi_heads.mask_head.fc.out_channels == 8
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert np.isfinite(trainer.storage.history("loss_mask").latest())

    sample = gray_mapper(cfg, True)(DatasetCatalog.get(f"{tiny_dataset}_train")[0])
    assert torch.equal(sample["image"][0], sample["image"][1])  # the project's mapper ran on the user's key
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.model([{"image": sample["image"], "height": 64, "width": 64}])[0]["instances"]
    assert len(out) > 0 and out.pred_masks.shape[1:] == (64, 64)  # the project's mask head, pasted


def _ddp_train(out: str, yaml: str) -> None:
    """Runs in each launched process: DefaultTrainer joins the process group launch() created."""
    import torch

    from detlightning.utils import comm

    cfg = get_cfg()
    cfg.merge_from_file(yaml)
    cfg.merge_from_list(["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()"])
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    sums = comm.all_gather(checksum)
    Path(out, f"rank{comm.get_rank()}.json").write_text(json.dumps({"iter": trainer.iter, "sums": sums,
                                                                    "world": comm.get_world_size()}))
    del torch


@pytest.mark.slow
def test_default_trainer_under_launch_trains_data_parallel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DETLIGHTNING_DATASETS", str(tmp_path / "datasets"))
    yaml = REPO_ROOT / "tests" / "data" / "d2_configs" / "tiny_shapes_mask_rcnn.yaml"
    from detlightning.engine import launch

    launch(_ddp_train, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path), str(yaml)))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["iter"] == 2 and r["world"] == 2 for r in reports)
    # DDP kept the replicas identical (different data per rank, averaged gradients)
    assert reports[0]["sums"][0] == reports[0]["sums"][1]
    assert (tmp_path / "model_final.pth").is_file()
