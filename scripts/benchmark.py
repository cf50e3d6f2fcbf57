#!/usr/bin/env python
"""Speed benchmarks. Targets live here, never in unit tests.

    python scripts/benchmark.py rcnn [--runs 5] [--warmup 1] [--size 800] [--skip-train]
        Mask R-CNN R50-FPN (random init) CPU inference seconds/image and training seconds/iteration, beside
        torchvision's maskrcnn_resnet50_fpn on the same input in the same run. Target: inference <= 0.8x and
        training <= 1.0x torchvision's time.
    python scripts/benchmark.py models [--runs 3] [--warmup 1] [--only NAME ...]
        CPU inference seconds/image of model-zoo models built from their LazyConfig files, with detectron2's
        reference weights from ../shared/compat (so they produce real detections; random weights otherwise, said
        so), at each config's test size: Mask R-CNN R50-FPN, RegNetY-4GF (LSJ), ViTDet-B.
    python scripts/benchmark.py loader [--iters 50]
        Images/second of the training data loader on the built-in shapes dataset.
    python scripts/benchmark.py coco_eval [--images 5000]
        Seconds to evaluate bbox+segm results with COCOEvaluator's core vs plain pycocotools on the same data, with
        identical numbers asserted. Target: at least 3x faster.

Each figure is the median of ``--runs`` timed runs after ``--warmup`` untimed ones.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _synthetic_sample(height: int, width: int, num_boxes: int = 4, seed: int = 0):
    """A smooth random BGR uint8 image and ``num_boxes`` boxes with box-filling masks."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, height // 32, width // 32, generator=g)
    image = (torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear")[0] * 255).to(torch.uint8)
    xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
    wh = 40 + torch.rand(num_boxes, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = torch.zeros(num_boxes, height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    classes = torch.randint(0, 80, (num_boxes,), generator=g)
    return image, boxes, masks, classes


def bench_rcnn(args: argparse.Namespace) -> None:
    import torchvision

    from detlightning.config import compose
    from detlightning.modeling import build_model
    from detlightning.structures import BitMasks, Boxes, Instances
    from detlightning.utils.events import EventStorage

    torch.manual_seed(0)
    h, w = args.size, int(args.size * 4 / 3)
    image, boxes, masks, classes = _synthetic_sample(h, w)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}, "
          f"input {h}x{w}")

    cfg = compose(["model=mask_rcnn", "backbone=resnet50", "data=coco", "model.device=cpu"])
    ours = build_model(cfg)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    # same input for both: torchvision takes RGB floats in [0, 1] and resizes to min_size=800 itself
    tv_image = image.flip(0).float() / 255.0

    results = {}
    ours.eval()
    tv.eval()
    with torch.no_grad():
        results["ours_infer"] = _median_time(lambda: ours([{"image": image}]), args.runs, args.warmup)
        results["tv_infer"] = _median_time(lambda: tv([tv_image]), args.runs, args.warmup)
    print(f"inference s/image: detlightning {results['ours_infer']:.3f}  torchvision {results['tv_infer']:.3f}  "
          f"ratio {results['ours_infer'] / results['tv_infer']:.2f} (target <= 0.80)")

    if args.skip_train:
        return
    inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=classes, gt_masks=BitMasks(masks))
    batch = [{"image": image, "instances": inst}]
    tv_target = [{"boxes": boxes, "labels": classes + 1, "masks": masks.to(torch.uint8)}]
    ours.train()
    tv.train()
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step_ours() -> None:
        with EventStorage():
            loss = sum(ours(batch).values())
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    def step_tv() -> None:
        loss = sum(tv([tv_image], tv_target).values())
        opt_tv.zero_grad()
        loss.backward()
        opt_tv.step()

    results["ours_train"] = _median_time(step_ours, args.runs, args.warmup)
    results["tv_train"] = _median_time(step_tv, args.runs, args.warmup)
    print(f"training s/iter (1 image): detlightning {results['ours_train']:.3f}  torchvision "
          f"{results['tv_train']:.3f}  ratio {results['ours_train'] / results['tv_train']:.2f} (target <= 1.00)")


# name -> (model-zoo LazyConfig, ../shared/compat reference set with its weights, input and test threshold)
ZOO_MODELS = {
    "mask_rcnn_R50_FPN": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py", "mask_rcnn_R_50_FPN"),
    "mask_rcnn_regnety_4gf_LSJ": ("new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ.py",
                                  "mask_rcnn_regnety_4gf_dds_FPN"),
    "mask_rcnn_vitdet_b": ("ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py", "mask_rcnn_vitdet_b"),
}


def _compat_dir() -> Path | None:
    import os

    root = Path(os.environ.get("DETLIGHTNING_COMPAT_DIR", Path(__file__).resolve().parents[2] / "shared" / "compat"))
    return root if (root / "weights.py").is_file() else None


def _zoo_model_and_input(config_name: str, reference: str) -> tuple[torch.nn.Module, dict, str]:
    """The eval-mode model of ``config_name``, its input, and where its weights came from."""
    import importlib.util
    import json

    from detlightning import model_zoo
    from detlightning.config import instantiate

    cfg = model_zoo.get_config(config_name)
    compat = _compat_dir()
    manifest = json.loads((compat / reference / "manifest.json").read_text()) if compat else None
    if manifest is not None:  # the threshold detectron2's reference outputs were computed with
        heads = cfg.model.roi_heads
        for predictor in heads.box_predictors if "box_predictors" in heads else [heads.box_predictor]:
            predictor.test_score_thresh = manifest.get("roi_score_thresh_test", 0.05)
    model = instantiate(cfg.model).eval()
    if manifest is None:
        size = 1024 if "vitdet" in config_name.lower() else 800
        image = _synthetic_sample(size, size)[0]
        return model, {"image": image, "height": size, "width": size}, "random init (no ../shared/compat)"
    spec = importlib.util.spec_from_file_location("_compat_weights", compat / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    state = weights.make_weights(manifest["shapes"], manifest["seed"])
    incompatible = model.load_state_dict(state, strict=False)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys, incompatible
    name = "astronaut_RGB_1024.pt" if manifest["input_format"] == "RGB" else "astronaut.pt"
    inp = torch.load(compat / "inputs" / name, weights_only=True)
    return model, inp, f"detectron2 reference weights ({reference})"


def bench_models(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, (config_name, reference) in ZOO_MODELS.items():
        if args.only and name not in args.only:
            continue
        model, inp, source = _zoo_model_and_input(config_name, reference)
        with torch.no_grad():
            detections = len(model([inp])[0]["instances"])
            seconds = _median_time(lambda m=model, x=inp: m([x]), args.runs, args.warmup)
        size = "x".join(str(s) for s in inp["image"].shape[-2:])
        print(f"{name:28s} {seconds:6.2f} s/image  input {size}  {detections} detections  [{config_name}; {source}]")


def bench_loader(args: argparse.Namespace) -> None:
    from detlightning.cli import setup_cfg
    from detlightning.data.benchmark import benchmark_train_loader

    workers = [f"dataloader.num_workers={args.workers}", "dataloader.ims_per_batch=2"]
    rate = benchmark_train_loader(setup_cfg([*workers, f"datasets.train=[{args.dataset}]"]), args.iters)
    print(f"train loader, {args.dataset} (256 px shapes, default augmentations): {rate:.1f} images/s")
    # COCO-sized: shapes images drawn at 800 px short side, COCO's training resize (640-800, max 1333) + flip
    coco_sized = setup_cfg(workers + [
        "data=shapes", "datasets.shapes.prefix=shapes800", "datasets.shapes.image_size=800",
        "datasets.shapes.num_train=64", "datasets.shapes.num_val=4", "datasets.train=[shapes800_train]",
        "input.min_size_train=[640,672,704,736,768,800]", "input.max_size_train=1333",
    ])
    rate = benchmark_train_loader(coco_sized, args.iters)
    print(f"train loader, COCO-sized images (800 px, resize 640-800/1333): {rate:.1f} images/s")


def bench_coco_eval(args: argparse.Namespace) -> None:
    from detlightning.evaluation.benchmark import benchmark_coco_eval

    benchmark_coco_eval(num_images=args.images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rcnn", help="Mask R-CNN inference/training speed vs torchvision")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", type=int, default=800, help="short side of the input")
    p.add_argument("--skip-train", action="store_true")
    p.set_defaults(func=bench_rcnn)
    p = sub.add_parser("models", help="inference speed of zoo LazyConfig models with reference weights")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--only", nargs="*", choices=sorted(ZOO_MODELS), help="a subset of the models")
    p.set_defaults(func=bench_models)
    p = sub.add_parser("loader", help="training data loader images/second")
    p.add_argument("--dataset", default="shapes_train")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="dataloader.num_workers")
    p.set_defaults(func=bench_loader)
    p = sub.add_parser("coco_eval", help="COCO evaluation speed vs pycocotools")
    p.add_argument("--images", type=int, default=5000)
    p.set_defaults(func=bench_coco_eval)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
