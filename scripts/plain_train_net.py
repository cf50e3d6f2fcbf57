#!/usr/bin/env python
"""Train and evaluate a detection model with a plain PyTorch loop: no Lightning, no Hydra app.

The counterpart of detectron2's ``tools/plain_train_net.py``: every step of training is written out below, so this
file is the template for research code that needs full control over the loop (custom losses, several optimizers,
odd schedules). It uses only the model library (``build_model``), the data loaders, the solver, ``EventStorage`` and
its writers, ``DetectionCheckpointer`` and ``inference_on_dataset``. For the everyday path (multi-GPU, callbacks,
loggers, sweeps) use ``scripts/train.py``.

Usage (``key=value`` arguments are Hydra overrides of ``detlightning/conf``, composed by
``detlightning.cli.setup_cfg``)::

    python scripts/plain_train_net.py model=mask_rcnn solver.max_iter=2000 paths.output_dir=output/plain
    python scripts/plain_train_net.py --resume model=mask_rcnn solver.max_iter=4000 paths.output_dir=output/plain
    python scripts/plain_train_net.py --eval-only model=mask_rcnn model.weights=output/plain/checkpoints/model_final.pth
    python scripts/plain_train_net.py d2_config=mask_rcnn_R_50_FPN_3x.yaml solver.max_iter=1000   # a detectron2 yaml

Config keys it reads: ``solver.*`` (optimizer, LR schedule, ``max_iter``, ``checkpoint_period`` (0: only the
final checkpoint), ``eval_period`` (0: evaluate only at the end), ``clip_gradients``, ``amp.enabled``),
``dataloader.*`` (``ims_per_batch`` is the batch size), ``datasets.train`` / ``datasets.test``, ``model.weights``
(initial weights; detectron2 ``.pth``/``.pkl`` or a Lightning ``.ckpt``), ``model.device``, ``seed`` and
``paths.output_dir`` (default ``./output``). The writers' period is ``callbacks.metrics_writer.period`` (the same
value the Lightning ``MetricsWriter`` uses; 20 when absent).

Outputs in ``paths.output_dir``: ``config.yaml``, ``log.txt``, ``metrics.json`` (one JSON object per written
iteration), ``tensorboard/`` (event files), ``checkpoints/`` (``model_XXXXXXX.pth``, ``model_final.pth`` and the
``last_checkpoint`` tag; each file holds the model, the optimizer, the LR scheduler and the iteration, and loads in
detectron2 as well) and ``inference/<dataset>/`` (COCO results JSON).

``--resume`` continues from ``checkpoints/last_checkpoint``: model, optimizer, scheduler and iteration are
restored, so the LR schedule goes on where it stopped. As in detectron2, the data stream restarts from the
sampler's beginning (a resumed run sees a different image order than an uninterrupted one).

One process only. For several GPUs or machines use ``scripts/train.py trainer=ddp trainer.devices=N`` (Lightning
strategies).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from detlightning import solver
from detlightning.checkpoint import DetectionCheckpointer, PeriodicCheckpointer
from detlightning.cli import setup_cfg
from detlightning.data import build_detection_test_loader, build_detection_train_loader
from detlightning.data.class_check import check_classes_fit_model, train_dataset_names
from detlightning.evaluation import build_evaluator, flatten_results_dict, inference_on_dataset, print_csv_format
from detlightning.modeling import build_model
from detlightning.utils.env import seed_all_rng
from detlightning.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    check_losses_finite,
)
from detlightning.utils.logger import setup_logger

logger = logging.getLogger("detlightning.plain_train_net")




# --------------------------------------------------------------------------------------------------- setup
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plain-PyTorch training loop over detlightning (no Lightning).",
        epilog="Example: python scripts/plain_train_net.py model=mask_rcnn solver.max_iter=1000",
    )
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate model.weights on datasets.test")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value (Hydra syntax)")
    return parser.parse_args(argv)


def build_cfg(overrides: Sequence[str]) -> DictConfig:
    """The config from ``key=value`` overrides; with ``d2_config=<detectron2 yaml>`` that file decides the model,
    input, data, solver and test settings, except the dotted keys given in ``overrides`` (they win).
    ``paths.output_dir`` defaults to ``./output`` (absolute)."""
    cfg = setup_cfg(list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = os.path.abspath(OmegaConf.select(cfg, "paths.output_dir") or "./output")
    return cfg


def setup(overrides: Sequence[str]) -> DictConfig:
    """Build the config (which registers the built-in shapes datasets with its parameters), create the output
    dir (with ``config.yaml``), configure logging and seed the RNGs."""
    cfg = build_cfg(overrides)
    out = cfg.paths.output_dir
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    setup_logger(out, name="detlightning")
    logger.info("Command line: %s", " ".join(sys.argv))
    seed = int(OmegaConf.select(cfg, "seed", default=-1))
    logger.info("Seed: %d", seed_all_rng(seed if seed >= 0 else None))
    return cfg


# ---------------------------------------------------------------------------------------------- evaluation
def do_test(cfg: DictConfig, model: nn.Module) -> OrderedDict[str, dict[str, Any]]:
    """Run ``model`` over every dataset of ``datasets.test``; ``{dataset: {"bbox": {"AP": ...}, ...}}``."""
    results: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for dataset_name in OmegaConf.select(cfg, "datasets.test", default=None) or []:
        data_loader = build_detection_test_loader(cfg, dataset_name)
        evaluator = build_evaluator(cfg, dataset_name, os.path.join(cfg.paths.output_dir, "inference", dataset_name))
        if evaluator is None:
            continue
        results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
        logger.info("Evaluation results for %s in csv format:", dataset_name)
        print_csv_format(results[dataset_name])
    return results


def flat_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"bbox/AP": ...}`` (one test dataset) or ``{"<dataset>/bbox/AP": ...}`` (several), numbers only (NaN kept:
    COCO reports NaN AP when a category has no ground truth or the model no predictions)."""
    tree: Mapping[str, Any] = next(iter(results.values())) if len(results) == 1 else results
    return {
        k: float(v)
        for k, v in flatten_results_dict(tree).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# ------------------------------------------------------------------------------------------------ training
def build_writers(cfg: DictConfig, max_iter: int) -> list[EventWriter]:
    """Console line, ``metrics.json`` and TensorBoard, as detectron2's ``default_writers``."""
    out = cfg.paths.output_dir
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(out, "metrics.json")),
        TensorboardXWriter(os.path.join(out, "tensorboard")),
    ]


def autocast_and_scaler(cfg: DictConfig) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    """``solver.amp.enabled``: float16 autocast with a gradient scaler on CUDA, bfloat16 autocast on the CPU."""
    if not OmegaConf.select(cfg, "solver.amp.enabled", default=False):
        return contextlib.nullcontext(), None
    device_type = torch.device(cfg.model.device).type
    if device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device_type, dtype=torch.bfloat16), None


def do_train(cfg: DictConfig, model: nn.Module, resume: bool = False) -> OrderedDict[str, dict[str, Any]]:
    """Train for ``solver.max_iter`` iterations (continuing from the last checkpoint with ``resume``); returns
    the results of the last evaluation."""
    model.train()
    optimizer = solver.build_optimizer(cfg, model)
    scheduler = solver.build_lr_scheduler(cfg, optimizer)
    autocast, grad_scaler = autocast_and_scaler(cfg)
    checkpointables: dict[str, Any] = {"optimizer": optimizer, "scheduler": scheduler}
    if grad_scaler is not None:
        checkpointables["grad_scaler"] = grad_scaler
    checkpointer = DetectionCheckpointer(model, os.path.join(cfg.paths.output_dir, "checkpoints"), **checkpointables)
    # --resume: model + optimizer + scheduler (+ scaler) from last_checkpoint; otherwise only model.weights
    start_iter = checkpointer.resume_or_load(cfg.model.weights, resume=resume).get("iteration", -1) + 1

    max_iter = int(cfg.solver.max_iter)
    checkpoint_period = int(cfg.solver.checkpoint_period or 0)
    eval_period = int(OmegaConf.select(cfg, "solver.eval_period", default=0) or 0)
    write_period = int(OmegaConf.select(cfg, "callbacks.metrics_writer.period", default=None) or 20)
    # checkpoint_period 0 means "only model_final.pth": a period longer than the run never comes due
    periodic_checkpointer = PeriodicCheckpointer(
        checkpointer, checkpoint_period if checkpoint_period > 0 else max_iter + 1, max_iter=max_iter
    )
    writers = build_writers(cfg, max_iter)

    results: OrderedDict[str, dict[str, Any]] = OrderedDict()
    data_loader = build_detection_train_loader(cfg)
    check_classes_fit_model(model, train_dataset_names(cfg))
    logger.info("Starting training from iteration %d (max_iter=%d)", start_iter, max_iter)
    with EventStorage(start_iter) as storage:
        data_iter = iter(data_loader)
        for iteration in range(start_iter, max_iter):
            storage.iter = iteration
            start = time.perf_counter()
            data = next(data_iter)
            data_time = time.perf_counter() - start

            with autocast:
                loss_dict = model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
            loss_values = check_losses_finite(loss_dict, iteration)
            storage.put_scalars(total_loss=sum(loss_values.values()), **loss_values)

            optimizer.zero_grad(set_to_none=True)
            if grad_scaler is not None:
                grad_scaler.scale(losses).backward()
                # step() clips (solver.clip_gradients, see build_optimizer) the unscaled gradients
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                losses.backward()
                optimizer.step()
            # the LR this iteration used; the schedule is per iteration
            storage.put_scalar("lr", optimizer.param_groups[0]["lr"], smoothing_hint=False)
            scheduler.step()
            storage.put_scalars(time=time.perf_counter() - start, data_time=data_time)

            last = iteration == max_iter - 1
            if last or (eval_period > 0 and (iteration + 1) % eval_period == 0):
                results = do_test(cfg, model)
                storage.put_scalars(**flat_metrics(results), smoothing_hint=False)
            if last or (iteration + 1) % write_period == 0:
                for writer in writers:
                    writer.write()
            periodic_checkpointer.step(iteration)
    for writer in writers:
        writer.close()
    if start_iter >= max_iter:  # nothing left to train (e.g. --resume of a finished run): evaluate what is there
        logger.info("Checkpoint is at iteration %d >= solver.max_iter=%d: no training", start_iter, max_iter)
        results = do_test(cfg, model)
    return results


def main(argv: Sequence[str] | None = None) -> OrderedDict[str, dict[str, Any]]:
    args = parse_args(argv)
    cfg = setup(args.opts)
    model = build_model(cfg)
    logger.debug("Model:\n%s", model)
    if args.eval_only:
        checkpointer = DetectionCheckpointer(model, os.path.join(cfg.paths.output_dir, "checkpoints"))
        if not cfg.model.weights and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs model.weights=<checkpoint (.pth, .pkl or .ckpt)>, or --resume with a "
                f"last_checkpoint in {checkpointer.save_dir}"
            )
        checkpointer.resume_or_load(cfg.model.weights, resume=args.resume)
        results = do_test(cfg, model)
    else:
        results = do_train(cfg, model, resume=args.resume)
    for dataset_name, res in results.items():
        logger.info("Final results on %s: %s", dataset_name, dict(flatten_results_dict(res)))
    return results


if __name__ == "__main__":
    main()
