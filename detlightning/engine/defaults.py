"""Glue between a composed config and Lightning: output dir + logging + seed (``default_setup``), the ``Trainer``
(``build_trainer``), and the two jobs ``scripts/train.py`` runs (``train``, ``evaluate``). ``DefaultPredictor``
(in :mod:`.predictor`) is re-exported here, where detectron2 keeps it.

``solver.max_iter`` becomes ``Trainer(max_steps=...)``; ``solver.eval_period`` becomes ``val_check_interval``
(counted across epochs; 0 = evaluate once, at the end); ``solver.amp.enabled`` picks mixed precision.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..config.reader import cfg_get
from ..utils import comm
from ..utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from .module import DetectionModule
from .predictor import DefaultPredictor

__all__ = [
    "DefaultPredictor",
    "DefaultTrainer",
    "build_callbacks",
    "build_loggers",
    "build_trainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "evaluate",
    "find_resume_checkpoint",
    "prepare_cfg",
    "primary_metric",
    "train",
]

logger = logging.getLogger(__name__)


def prepare_cfg(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with ``paths.output_dir`` filled in: the Hydra run dir inside a Hydra app, else
    ``./output`` (detectron2's OUTPUT_DIR default)."""
    cfg = copy.deepcopy(cfg)
    if OmegaConf.select(cfg, "paths.output_dir") is None:
        out = "./output"
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                out = HydraConfig.get().runtime.output_dir
        except (ImportError, ValueError):
            pass
        with open_dict(cfg):
            cfg.paths = cfg.get("paths") or {}
            cfg.paths.output_dir = os.path.abspath(out)
    return cfg


def default_setup(cfg: Any, args: argparse.Namespace | None = None) -> int:
    """What every training script does first (detectron2's ``default_setup(cfg, args)``): create the output dir
    (``paths.output_dir`` / ``OUTPUT_DIR``), save the config there (``config.yaml``), configure logging when no
    Hydra app did, log the command-line ``args`` and the environment, seed every RNG (``seed`` < 0: a random one)
    and apply ``CUDNN_BENCHMARK``. Takes our ``DictConfig``, a detectron2 ``CfgNode`` or a LazyConfig
    (``train.output_dir``, ``train.seed``, ``train.cudnn_benchmark``; saved with ``LazyConfig.save``). Returns the
    seed used."""
    from lightning.pytorch import seed_everything

    from .lazy import is_lazy_config

    lazy = is_lazy_config(cfg)
    out_key, seed_key = ("train.output_dir", "train.seed") if lazy else ("paths.output_dir", "seed")
    out = str(OmegaConf.select(cfg, out_key) if lazy else cfg_get(cfg, out_key, None) or "./output")
    rank = comm.get_rank()
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        if lazy:
            from ..config import LazyConfig

            LazyConfig.save(cfg, os.path.join(out, "config.yaml"))
        else:
            with open(os.path.join(out, "config.yaml"), "w") as f:
                f.write(OmegaConf.to_yaml(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg.dump())
    if not logging.getLogger().handlers:  # not under Hydra (which configures the root logger)
        from ..utils.logger import setup_logger

        setup_logger(out, distributed_rank=rank, name="detlightning")
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    if args is not None:
        logger.info("Command line arguments: %s", args)
        config_file = getattr(args, "config_file", "")
        if config_file and os.path.isfile(config_file):
            with open(config_file) as f:
                logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig) and "CUDNN_BENCHMARK" in cfg:
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if lazy:
        torch.backends.cudnn.benchmark = bool(OmegaConf.select(cfg, "train.cudnn_benchmark", default=False))
    seed = int(OmegaConf.select(cfg, seed_key, default=-1) if lazy else cfg_get(cfg, seed_key, -1))
    if seed < 0:
        from ..utils.env import seed_all_rng

        seed = seed_all_rng(None)
    return int(seed_everything(seed, workers=True, verbose=False))


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """Instantiate every ``_target_`` entry of ``cfg.callbacks`` (``None`` entries are skipped)."""
    from hydra.utils import instantiate

    out = []
    for name, spec in (OmegaConf.select(cfg, "callbacks") or {}).items():
        if spec is None:
            continue
        if not isinstance(spec, (Mapping, DictConfig)) or "_target_" not in spec:
            raise ValueError(f"callbacks.{name} must be a mapping with _target_, got {spec!r}")
        out.append(instantiate(spec))
    return out


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate every ``_target_`` entry of ``cfg.logger`` (Lightning loggers)."""
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, "logger") or {}
    return [instantiate(spec) for spec in node.values() if spec is not None]


def build_trainer(cfg: DictConfig, callbacks: list[Any] | None = None, loggers: list[Any] | None = None,
                  **overrides: Any) -> Any:
    """A ``lightning.pytorch.Trainer`` from ``cfg.trainer`` (+ the derived settings in the module docstring);
    ``overrides`` win over everything."""
    from hydra.utils import instantiate
    from lightning.pytorch import Trainer

    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if isinstance(kwargs.get("strategy"), Mapping):
        kwargs["strategy"] = instantiate(kwargs["strategy"])
    max_iter = int(cfg.solver.max_iter)
    if kwargs.get("max_steps") is None:
        kwargs["max_steps"] = max_iter
    if kwargs.get("val_check_interval") is None:
        eval_period = int(OmegaConf.select(cfg, "solver.eval_period", default=0) or 0)
        kwargs["val_check_interval"] = eval_period if eval_period > 0 else int(kwargs["max_steps"])
        kwargs["check_val_every_n_epoch"] = None
    if not list(OmegaConf.select(cfg, "datasets.test") or []):
        kwargs["limit_val_batches"] = 0
    if OmegaConf.select(cfg, "solver.amp.enabled", default=False) and str(kwargs.get("precision")) in ("32", "32-true"):
        accelerator = kwargs.get("accelerator")
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        kwargs["precision"] = "16-mixed" if gpu else "bf16-mixed"
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("check_val_every_n_epoch",)}
    kwargs["default_root_dir"] = cfg.paths.output_dir
    kwargs["callbacks"] = build_callbacks(cfg) if callbacks is None else callbacks
    lg = build_loggers(cfg) if loggers is None else loggers
    kwargs["logger"] = lg if lg else False
    kwargs.update(overrides)
    return Trainer(**kwargs)


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """``<output_dir>/checkpoints/last.ckpt`` (what ``resume=true`` continues from); if that is missing or
    damaged (reported by path), the newest intact ``.ckpt`` in that folder; ``None`` when there is none."""
    from ..checkpoint.lightning import find_resume_ckpt

    return find_resume_ckpt(os.path.join(cfg.paths.output_dir, "checkpoints"))


def _final_results(module: DetectionModule, trainer: Any) -> dict[str, Any]:
    if module.last_results:
        return dict(module.last_results)
    # ddp_spawn: evaluation ran in child processes; only the logged metrics came back
    return {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k and "loss" not in k}


def _checkpoint_global_step(path: str) -> int | None:
    """The ``global_step`` saved in the Lightning checkpoint ``path`` (tensors memory-mapped, not read), or None
    when it cannot be told."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # damaged or unreadable: the resume itself reports it
        logger.warning("Cannot read the step of %s (%s: %s)", path, type(e).__name__, e)
        return None
    step = state.get("global_step") if isinstance(state, Mapping) else None
    return int(step) if isinstance(step, int) else None


def _run_is_complete(ckpt_path: str, max_steps: int, key: str) -> bool:
    """Whether the checkpoint to resume from already reached ``max_steps`` (then training again would only redo
    the last iterations and overwrite the final weights)."""
    done = _checkpoint_global_step(ckpt_path)
    if done is None or max_steps is None or max_steps < 0 or done < max_steps:
        return False
    logger.warning("Resume: the run is complete: %s is at iteration %d and %s=%d; nothing to train (raise %s to "
                   "train longer). Evaluating its final weights.", ckpt_path, done, key, max_steps, key)
    return True


def _evaluate_finished(module: DetectionModule, trainer: Any, ckpt_path: str, has_test: bool,
                       **test_kwargs: Any) -> dict[str, Any]:
    """The final evaluation of a complete run: its last checkpoint's weights on the test datasets (``{}`` when there
    are none)."""
    if not has_test:
        return {}
    module.load_weights(ckpt_path)
    trainer.test(module, **test_kwargs)
    results = _final_results(module, trainer)
    _print_final(results)
    return results


def train(cfg: DictConfig, module_cls: type[DetectionModule] = DetectionModule, datamodule_cls: type | None = None,
          **trainer_overrides: Any) -> dict[str, Any]:
    """Train as ``cfg`` says (``resume=true``: continue from the output dir's last checkpoint; ``model.weights``:
    initial weights otherwise), evaluate at the end, and return the final evaluation results
    (``{dataset: {"bbox": {"AP": ...}}}``). ``resume=true`` on a run whose last checkpoint already reached
    ``solver.max_iter`` trains nothing: it says so and returns the evaluation of that checkpoint."""
    from ..data import DetectionDataModule

    cfg = prepare_cfg(cfg)
    default_setup(cfg)
    datamodule = (datamodule_cls or DetectionDataModule)(cfg)
    module = module_cls(cfg)
    ckpt_path = None
    if OmegaConf.select(cfg, "resume", default=False):
        ckpt_path = find_resume_checkpoint(cfg)
        if ckpt_path is None:
            logger.info("resume=true but no checkpoint in %s: starting from scratch", cfg.paths.output_dir)
        else:
            logger.info("Resuming from %s", ckpt_path)
    if ckpt_path is None and cfg.model.weights:
        module.load_weights(cfg.model.weights)
    trainer = build_trainer(cfg, **trainer_overrides)
    max_steps = trainer.max_steps
    has_test = bool(list(OmegaConf.select(cfg, "datasets.test") or []))
    if ckpt_path is not None and _run_is_complete(ckpt_path, max_steps, "solver.max_iter"):
        return _evaluate_finished(module, trainer, ckpt_path, has_test, datamodule=datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    eval_period = int(OmegaConf.select(cfg, "solver.eval_period", default=0) or 0)
    # the periodic evaluation misses the last iteration when max_iter is no multiple of eval_period
    if has_test and eval_period > 0 and max_steps % eval_period != 0 and trainer.global_step >= max_steps:
        trainer.validate(module, datamodule=datamodule)
    results = _final_results(module, trainer) if has_test else {}
    _print_final(results)
    return results


def evaluate(cfg: DictConfig, module_cls: type[DetectionModule] = DetectionModule, datamodule_cls: type | None = None,
             **trainer_overrides: Any) -> dict[str, Any]:
    """Evaluate ``model.weights`` on ``datasets.test`` (detectron2's ``--eval-only``); returns the results."""
    from ..data import DetectionDataModule

    cfg = prepare_cfg(cfg)
    default_setup(cfg)
    if not cfg.model.weights:
        raise ValueError("eval_only needs model.weights=<checkpoint (.pth, .pkl or .ckpt)>")
    datamodule = (datamodule_cls or DetectionDataModule)(cfg)
    module = module_cls(cfg)
    module.load_weights(cfg.model.weights)
    if OmegaConf.select(cfg, "model.compile", default=False):
        from ..modeling.fast_inference import compile_for_inference

        compile_for_inference(module.model.eval())
    trainer = build_trainer(cfg, **trainer_overrides)
    trainer.test(module, datamodule=datamodule)
    results = _final_results(module, trainer)
    _print_final(results)
    return results


def primary_metric(results: Mapping[str, Any]) -> float | None:
    """The box AP of the first dataset that has one (what ``scripts/train.py`` returns to Hydra sweepers), else
    None."""
    for res in results.values():
        if isinstance(res, Mapping) and isinstance(res.get("bbox"), Mapping) and "AP" in res["bbox"]:
            return float(res["bbox"]["AP"])
    return None


def _print_final(results: Mapping[str, Any]) -> None:
    """One summary line per dataset (the full tables were logged by the evaluation itself, as detectron2 does)."""
    if not comm.is_main_process() or not results:
        return
    headline = ("AP", "AP50", "mIoU", "PQ", "AR@100")
    for name, res in results.items():
        if isinstance(res, Mapping):
            parts = [f"{task}/{k} {v:.2f}" for task, metrics in res.items() if isinstance(metrics, Mapping)
                     for k, v in metrics.items() if k in headline and isinstance(v, (int, float))]
            logger.info("Final evaluation results, %s: %s", name, " | ".join(parts) or dict(res))
        else:  # ddp_spawn: the flat metrics logged by the child processes
            logger.info("Final evaluation results: %s = %s", name, res)


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's command line for training scripts: ``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url`` and trailing ``KEY VALUE`` pairs
    (``opts``, for ``cfg.merge_from_list``)."""
    parser = argparse.ArgumentParser(
        epilog=epilog or f"Example: {sys.argv[0]} --config-file cfg.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT_DIR instead of loading MODEL.WEIGHTS")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS and exit")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's index (0 is the master)")
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous URL, tcp://<master ip>:<port>; 'auto' picks a free local port")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01")
    return parser


def default_writers(output_dir: str, max_iter: int | None = None) -> list[EventWriter]:
    """detectron2's default event writers: the console line, ``<output_dir>/metrics.json`` and TensorBoard."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when more than one process runs (on this process's CUDA
    device when there is one), else ``model`` itself. ``fp16_compression`` halves gradient traffic;
    ``kwargs`` go to ``DistributedDataParallel``."""
    if comm.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if torch.cuda.is_available() and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


# detectron2 keeps DefaultTrainer in engine/defaults.py: ``from detlightning.engine.defaults import DefaultTrainer``
from .trainer import DefaultTrainer  # noqa: E402
