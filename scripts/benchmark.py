#!/usr/bin/env python
"""Speed benchmarks. Targets live here, never in unit tests.

Every inference figure uses weights that produce real detections: detectron2-format weights from
``../shared/compat`` (``make_weights`` of each reference set, with which detectron2 computed the parity outputs;
100 detections with masks per image, as a trained model gives). Without ``../shared/compat`` the models keep their
random initialisation and the output says so. Each figure is the median of ``--runs`` timed runs after ``--warmup``
untimed ones; when two implementations are compared their runs alternate, so load on the machine hits both alike.

    python scripts/benchmark.py rcnn [--runs 5] [--skip-train]
        Mask R-CNN R50-FPN on an 800x1200 image beside torchvision's maskrcnn_resnet50_fpn (``box_score_thresh=0``:
        100 detections, so both run the mask head on 100 instances): s/image, the per-stage split, peak memory above
        the loaded model, images/s for a batch of 4. Then training s/iteration on 2 images of 512x768 with 5 boxes
        and masks each. Targets (issue 17): inference <= 0.56x and training <= 0.8x torchvision's time.
    python scripts/benchmark.py models [--runs 3] [--only NAME ...]
        The same figures for the model zoo: Mask R-CNN, RetinaNet, Keypoint R-CNN, Cascade Mask R-CNN (R50-FPN),
        Mask R-CNN RegNetY-4GF, ViTDet-B, each at its config's test size.
    python scripts/benchmark.py fast [--runs 3] [--only NAME ...] [--modes ...]
        The opt-in fast path (``model.compile``, ``test.precision``): s/image of each mode, and how far its outputs
        move from the fp32 model's (matched fraction, max box and score differences, mean mask IoU). Mask R-CNN
        R50-FPN runs on the 800x1200 image of ``rcnn``. Target (issue 17): <= 0.35x detectron2's fp32 time.
    python scripts/benchmark.py loader [--iters 50]
        Images/second of the training data loader, beside the images/second the default model trains at.
    python scripts/benchmark.py coco_eval [--images 5000]
        Seconds to evaluate bbox+segm results with COCOEvaluator's core vs plain pycocotools on the same data, with
        identical numbers asserted. Target: at least 3x faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# --------------------------------------------------------------------------------------------------- measuring
def _median_time(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` over ``runs`` rounds, the functions alternating within a round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


class StageTimer:
    """Wall time spent in named submodules (forward hooks), summed per call of the whole model."""

    def __init__(self, model: torch.nn.Module, stages: dict[str, str]) -> None:
        self.times: dict[str, list[float]] = {label: [] for label in stages}
        self._current: dict[str, float] = {}
        self._start: dict[str, float] = {}
        for label, path in stages.items():
            module = model.get_submodule(path)
            module.register_forward_pre_hook(lambda *_, label=label: self._enter(label))
            module.register_forward_hook(lambda *_, label=label: self._exit(label))

    def _enter(self, label: str) -> None:
        self._start[label] = time.perf_counter()

    def _exit(self, label: str) -> None:
        self._current[label] = self._current.get(label, 0.0) + time.perf_counter() - self._start[label]

    def end_call(self) -> None:
        for label in self.times:
            self.times[label].append(self._current.get(label, 0.0))
        self._current = {}


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_memory_mb(which: str) -> float | None:
    """Peak resident memory of one inference above the loaded model, in a fresh process (so that no memory cached
    by an earlier call hides the peak): ``which`` is a ``ZOO_MODELS`` name or ``torchvision``. Linux only (the
    high-water mark is reset through /proc/self/clear_refs); None elsewhere."""
    command = [sys.executable, str(Path(__file__).resolve()), "_peak", which]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    try:
        return float(lines[-1]) if result.returncode == 0 and lines else None
    except ValueError:
        return None


def _peak_child(args: argparse.Namespace) -> None:
    """(In the child process of :func:`_peak_memory_mb`.) Prints the peak MB of one inference, or nothing."""
    if args.which == "torchvision":
        model, inp, _ = build_zoo_model("mask_rcnn_R50_FPN")
        inp = _resized(inp, 800, 1200)
        model = _torchvision_mask_rcnn()
        image = inp["image"].flip(0).float() / 255.0

        def run() -> object:
            return model([image])
    else:
        model, inp, _ = build_zoo_model(args.which)
        if args.which == "mask_rcnn_R50_FPN":
            inp = _resized(inp, 800, 1200)

        def run() -> object:
            return model([inp])

    before = _rss_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return
    with torch.no_grad():
        run()
    peak = _rss_mb("VmHWM")
    if before is not None and peak is not None:
        print(f"{peak - before:.1f}")


def _torchvision_mask_rcnn() -> torch.nn.Module:
    """torchvision's Mask R-CNN R50-FPN, random init, keeping its top 100 detections whatever their score."""
    import torchvision

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                               box_score_thresh=0.0)
    return model.eval()


# --------------------------------------------------------------------------------------------------- models
def _compat_dir() -> Path | None:
    root = Path(os.environ.get("DETLIGHTNING_COMPAT_DIR", Path(__file__).resolve().parents[2] / "shared" / "compat"))
    return root if (root / "weights.py").is_file() else None


# name -> (model-zoo config, ../shared/compat reference set whose weights it loads, stages timed)
_RCNN_STAGES = {"backbone+FPN": "backbone", "RPN": "proposal_generator", "ROI heads": "roi_heads"}
ZOO_MODELS: dict[str, tuple[str, str, dict[str, str]]] = {
    "mask_rcnn_R50_FPN": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py", "mask_rcnn_R_50_FPN", _RCNN_STAGES),
    "retinanet_R50_FPN": ("COCO-Detection/retinanet_R_50_FPN_1x.py", "retinanet_R_50_FPN",
                          {"backbone+FPN": "backbone", "head": "head"}),
    "keypoint_rcnn_R50_FPN": ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py", "keypoint_rcnn_R_50_FPN", _RCNN_STAGES),
    "cascade_mask_rcnn_R50_FPN": ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "cascade_mask_rcnn_R_50_FPN",
                                  _RCNN_STAGES),
    "mask_rcnn_regnety_4gf_LSJ": ("new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ.py",
                                  "mask_rcnn_regnety_4gf_dds_FPN", _RCNN_STAGES),
    "mask_rcnn_vitdet_b": ("ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py", "mask_rcnn_vitdet_b", _RCNN_STAGES),
}
# torchvision's stages (its transform's postprocess is a method, not a forward: it lands in "other")
_TV_STAGES = {"backbone+FPN": "backbone", "RPN": "rpn", "ROI heads": "roi_heads", "resize": "transform"}


def _load_compat_weights(model: torch.nn.Module, compat: Path, manifest: dict) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_compat_weights", compat / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    incompatible = model.load_state_dict(weights.make_weights(manifest["shapes"], manifest["seed"]), strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise RuntimeError(f"compat weights do not fit the model: {incompatible}")


def build_zoo_model(name: str) -> tuple[torch.nn.Module, dict, str]:
    """The eval-mode model of ``ZOO_MODELS[name]``, its input (the compat astronaut image) and where its weights
    came from."""
    from detlightning import model_zoo
    from detlightning.config import instantiate
    from detlightning.modeling import build_model

    config_name, reference, _ = ZOO_MODELS[name]
    compat = _compat_dir()
    manifest = json.loads((compat / reference / "manifest.json").read_text()) if compat else {}
    # the test threshold detectron2's reference outputs were computed with
    threshold = manifest.get("roi_score_thresh_test", manifest.get("score_thresh_test", 0.05))
    cfg = model_zoo.get_config(config_name)
    if config_name.endswith(".yaml"):
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
    else:
        if "roi_heads" in cfg.model:
            heads = cfg.model.roi_heads
            for predictor in heads.box_predictors if "box_predictors" in heads else [heads.box_predictor]:
                predictor.test_score_thresh = threshold
        model = instantiate(cfg.model)
    model.eval()
    if compat is None:
        size = 1024 if "vitdet" in name else 800
        image = _synthetic_sample(size, size)[0]
        return model, {"image": image, "height": size, "width": size}, "random init (no ../shared/compat)"
    _load_compat_weights(model, compat, manifest)
    file = "astronaut_RGB_1024.pt" if manifest["input_format"] == "RGB" else "astronaut.pt"
    return model, torch.load(compat / "inputs" / file, weights_only=True), f"compat weights of {reference}"


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


def _resized(inp: dict, height: int, width: int) -> dict:
    """The input dict with its image bilinearly resized to ``height`` x ``width`` (outputs at that size)."""
    image = inp["image"][None].float()
    image = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)
    return {"image": image[0].round().clamp(0, 255).to(torch.uint8), "height": height, "width": width}


def _num_detections(output: dict) -> int:
    return len(output["instances"]) if "instances" in output else 0


# --------------------------------------------------------------------------------------------------- reports
def _measure(
    name: str, run: Callable[[list], object], inputs: dict, timer: StageTimer, times: list[float], args,
    memory_of: str,
) -> dict:
    """One report row from timed runs already made (``times``, ``timer``): adds peak memory (of ``memory_of``, in
    a fresh process) and batch-4 speed."""
    row = {"name": name, "s/image": statistics.median(times)}
    stages = {label: statistics.median(t[-len(times):]) for label, t in timer.times.items()}
    row["stages"] = stages
    row["other"] = row["s/image"] - sum(stages.values())
    row["peak MB"] = _peak_memory_mb(memory_of)
    with torch.no_grad():
        if args.batch > 1:
            batch_time = _median_time(lambda: run([inputs] * args.batch), max(1, args.runs // 2), 1)
            row["batch img/s"] = args.batch / batch_time
    return row


def _print_rows(rows: list[dict], batch: int) -> None:
    labels = list(dict.fromkeys(label for row in rows for label in row["stages"]))
    header = f"{'':30s} {'s/image':>8s} " + " ".join(f"{label:>13s}" for label in labels)
    header += f" {'other':>7s} {'peak MB':>8s} {f'batch-{batch} img/s':>16s} {'dets':>5s}"
    print(header)
    for row in rows:
        line = f"{row['name']:30s} {row['s/image']:8.3f} "
        line += " ".join(f"{row['stages'][label]:13.3f}" if label in row["stages"] else f"{'-':>13s}"
                         for label in labels)
        peak = row.get("peak MB")
        line += f" {row['other']:7.3f} {peak if peak is None else round(peak):>8} "
        line += f"{row.get('batch img/s', float('nan')):16.2f} {row.get('dets', '-'):>5}"
        print(line)


def _environment() -> str:
    import platform

    import torchvision

    return (f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}")


def bench_rcnn(args: argparse.Namespace) -> None:

    print(_environment())
    model, inp, source = build_zoo_model("mask_rcnn_R50_FPN")
    inp = _resized(inp, 800, 1200)
    tv = _torchvision_mask_rcnn()
    # the same pixels: torchvision takes RGB floats in [0, 1]; 800x1200 is already its test size (800, max 1333)
    tv_image = inp["image"].flip(0).float() / 255.0
    ours_timer, tv_timer = StageTimer(model, _RCNN_STAGES), StageTimer(tv, _TV_STAGES)

    def run_ours(batch: list) -> list:
        out = model(batch)
        ours_timer.end_call()
        return out

    def run_tv(batch: list) -> list:
        out = tv([tv_image] * len(batch))
        tv_timer.end_call()
        return out

    with torch.no_grad():
        dets = (_num_detections(run_ours([inp])[0]), len(run_tv([inp])[0]["boxes"]))
        times = _interleaved({"ours": lambda: run_ours([inp]), "tv": lambda: run_tv([inp])}, args.runs, args.warmup)
    rows = [
        {**_measure("detlightning", run_ours, inp, ours_timer, times["ours"], args, "mask_rcnn_R50_FPN"),
         "dets": dets[0]},
        {**_measure("torchvision maskrcnn_r50_fpn", run_tv, inp, tv_timer, times["tv"], args, "torchvision"),
         "dets": dets[1]},
    ]
    print(f"Mask R-CNN R50-FPN inference, 800x1200, fp32 ({source}; torchvision random init with "
          f"box_score_thresh=0), median of {args.runs} interleaved runs, seconds:")
    _print_rows(rows, args.batch)
    ratio = rows[0]["s/image"] / rows[1]["s/image"]
    print(f"ratio detlightning / torchvision: {ratio:.2f} (target <= 0.56)")
    if not args.skip_train:
        bench_rcnn_train(args, model)


def bench_rcnn_train(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Training s/iteration: 2 images of 512x768 with 5 boxes and masks each, SGD step included."""
    import torchvision

    from detlightning.structures import BitMasks, Boxes, Instances
    from detlightning.utils.events import EventStorage

    batch, tv_images, tv_targets = [], [], []
    for seed in range(2):
        image, boxes, masks, classes = _synthetic_sample(512, 768, num_boxes=5, seed=seed)
        instances = Instances((512, 768), gt_boxes=Boxes(boxes), gt_classes=classes, gt_masks=BitMasks(masks))
        batch.append({"image": image, "instances": instances})
        tv_images.append(image.flip(0).float() / 255.0)
        tv_targets.append({"boxes": boxes, "labels": classes + 1, "masks": masks.to(torch.uint8)})
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=512, max_size=768
    )
    model.train()
    tv.train()
    opt_ours = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

    def step_ours() -> None:
        with EventStorage():
            loss = sum(model(batch).values())
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    def step_tv() -> None:
        loss = sum(tv(tv_images, tv_targets).values())
        opt_tv.zero_grad()
        loss.backward()
        opt_tv.step()

    times = _interleaved({"ours": step_ours, "tv": step_tv}, args.runs, args.warmup)
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["tv"])
    print(f"Mask R-CNN R50-FPN training, 2 images 512x768, 5 boxes+masks each, s/iteration: detlightning "
          f"{ours:.3f}  torchvision {theirs:.3f}  ratio {ours / theirs:.2f} (target <= 0.80)")
    model.eval()


def bench_models(args: argparse.Namespace) -> None:
    print(_environment())
    rows = []
    for name in args.only or ZOO_MODELS:
        model, inp, source = build_zoo_model(name)
        timer = StageTimer(model, ZOO_MODELS[name][2])

        def run(batch: list, model=model, timer=timer) -> list:
            out = model(batch)
            timer.end_call()
            return out

        with torch.no_grad():
            dets = _num_detections(run([inp])[0])
            times = _interleaved({name: lambda: run([inp])}, args.runs, args.warmup)[name]
        size = "x".join(str(s) for s in inp["image"].shape[-2:])
        row = {**_measure(f"{name} {size}", run, inp, timer, times, args, name), "dets": dets}
        rows.append(row)
        print(f"  {name}: {ZOO_MODELS[name][0]}, {source}", flush=True)
    print(f"Model zoo inference, fp32, median of {args.runs} runs, seconds:")
    _print_rows(rows, args.batch)


FAST_MODES = ("fp32", "bf16", "compile", "compile+bf16")


def bench_fast(args: argparse.Namespace) -> None:
    """The opt-in fast path against the fp32 eager model: speed, and how far the outputs move."""
    from detlightning.evaluation.compare import compare_instances
    from detlightning.modeling.fast_inference import compile_for_inference, cpu_has_fast_bf16, set_inference_precision

    print(f"{_environment()}; CPU with native bf16 (AVX512-BF16/AMX): {cpu_has_fast_bf16()}")
    for name in args.only or ["mask_rcnn_R50_FPN"]:
        reference = None
        print(f"{name}, median of {args.runs} runs after {args.warmup} warm-up run(s) (compilation happens there):")
        print(f"  {'mode':14s} {'s/image':>8s} {'vs fp32':>8s} {'matched':>8s} {'max box px':>10s} "
              f"{'max score':>9s} {'mask IoU':>8s} {'first call s':>12s}")
        fp32_time = None
        for mode in args.modes:
            model, inp, _ = build_zoo_model(name)
            if name == "mask_rcnn_R50_FPN":  # the workload of `rcnn`
                inp = _resized(inp, 800, 1200)
            precision = "bf16" if "bf16" in mode else "fp32"
            with torch.no_grad():
                t0 = time.perf_counter()
                set_inference_precision(model, precision)
                if "compile" in mode:
                    compile_for_inference(model)

                def run(model=model) -> list:
                    return model([inp])

                outputs = run()[0]
                first = time.perf_counter() - t0
                seconds = _median_time(run, args.runs, args.warmup)
            if reference is None:
                reference, fp32_time = outputs, seconds
            figures = compare_instances(reference["instances"], outputs["instances"])
            print(f"  {mode:14s} {seconds:8.3f} {seconds / fp32_time:8.2f} {figures['match_fraction']:8.3f} "
                  f"{figures['box']:10.3f} {figures['score']:9.4f} {figures.get('mask_iou', float('nan')):8.4f} "
                  f"{first:12.1f}", flush=True)
            del model


def _model_train_rate(cfg, iters: int) -> float:
    """Images/second the model of ``cfg`` trains at (forward, backward, SGD step) on batches of its own loader."""
    from detlightning.data import build_detection_train_loader
    from detlightning.modeling import build_model
    from detlightning.utils.events import EventStorage

    model = build_model(cfg).train()
    # lr 0: the step's arithmetic without moving a random model off to NaN in a few steps (only speed is measured)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    batches = iter(build_detection_train_loader(cfg))

    def step() -> int:
        batch = next(batches)
        with EventStorage():
            loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch)

    step()
    start, images = time.perf_counter(), 0
    for _ in range(iters):
        images += step()
    return images / (time.perf_counter() - start)


def bench_loader(args: argparse.Namespace) -> None:
    from detlightning.cli import setup_cfg
    from detlightning.data.benchmark import benchmark_train_loader

    workers = [f"dataloader.num_workers={args.workers}", "dataloader.ims_per_batch=2"]
    configs = {
        f"{args.dataset} (256 px shapes, default augmentations)": setup_cfg(
            [*workers, f"datasets.train=[{args.dataset}]"]
        ),
        # COCO-sized: shapes images drawn at 800 px short side, COCO's training resize (640-800, max 1333) + flip
        "COCO-sized images (800 px, resize 640-800/1333)": setup_cfg(workers + [
            "data=shapes", "datasets.shapes.prefix=shapes800", "datasets.shapes.image_size=800",
            "datasets.shapes.num_train=64", "datasets.shapes.num_val=4", "datasets.train=[shapes800_train]",
            "input.min_size_train=[640,672,704,736,768,800]", "input.max_size_train=1333",
        ]),
    }
    for label, cfg in configs.items():
        rate = benchmark_train_loader(cfg, args.iters)
        consumed = _model_train_rate(cfg, args.model_iters)
        print(f"train loader, {label}: {rate:.1f} images/s with {args.workers} workers; the default model "
              f"({cfg.model.meta_architecture}, {cfg.model.backbone.name}) trains at {consumed:.2f} images/s: "
              f"{rate / consumed:.0f}x (target >= 2x)", flush=True)


def bench_coco_eval(args: argparse.Namespace) -> None:
    from detlightning.evaluation.benchmark import benchmark_coco_eval

    benchmark_coco_eval(num_images=args.images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)

    def timed(p: argparse.ArgumentParser, runs: int) -> None:
        p.add_argument("--runs", type=int, default=runs)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--batch", type=int, default=4, help="batch size of the images/s column (1: skip it)")

    p = sub.add_parser("rcnn", help="Mask R-CNN R50-FPN inference and training vs torchvision")
    timed(p, 5)
    p.add_argument("--skip-train", action="store_true")
    p.set_defaults(func=bench_rcnn)
    p = sub.add_parser("models", help="inference of model-zoo models with detectron2-format weights")
    timed(p, 3)
    p.add_argument("--only", nargs="*", choices=sorted(ZOO_MODELS), help="a subset of the models")
    p.set_defaults(func=bench_models)
    p = sub.add_parser("fast", help="the opt-in fast path (compile, bf16): speed and output differences")
    timed(p, 3)
    p.add_argument("--only", nargs="*", choices=sorted(ZOO_MODELS), help="models (default: Mask R-CNN R50-FPN)")
    p.add_argument("--modes", nargs="*", default=list(FAST_MODES), choices=FAST_MODES,
                   help="fp32 (the reference, always run first) and the fast modes")
    p.set_defaults(func=bench_fast)
    p = sub.add_parser("loader", help="training data loader images/second vs what the model consumes")
    p.add_argument("--dataset", default="shapes_train")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--model-iters", type=int, default=3, help="training steps timed for the model's rate")
    p.add_argument("--workers", type=int, default=2, help="dataloader.num_workers")
    p.set_defaults(func=bench_loader)
    p = sub.add_parser("_peak", help=argparse.SUPPRESS)  # the child process of _peak_memory_mb
    p.add_argument("which")
    p.set_defaults(func=_peak_child)
    p = sub.add_parser("coco_eval", help="COCO evaluation speed vs pycocotools")
    p.add_argument("--images", type=int, default=5000)
    p.set_defaults(func=bench_coco_eval)
    args = parser.parse_args(argv)
    if args.what == "fast":
        args.modes = ["fp32"] + [m for m in args.modes if m != "fp32"]
    args.func(args)


if __name__ == "__main__":
    main()
