"""Training and evaluating LazyConfig (``.py``) models on Lightning: what detectron2's
``tools/lazyconfig_train_net.py`` does, with Lightning's loop, precision plugins and DDP strategy.

The lazy config supplies everything: ``model``, ``dataloader.train`` / ``dataloader.test`` /
``dataloader.evaluator``, ``optimizer`` (its ``params.model`` is filled with the model), ``lr_multiplier`` (a
param scheduler over the fraction of training, stepped per iteration by :class:`~detlightning.solver.LRMultiplier`)
and ``train`` (``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp.enabled``, ``ddp.*``, ``checkpoint_period``,
``eval_period``, ``log_period``, ``device``, ``seed``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from omegaconf import DictConfig, OmegaConf

from ..config import instantiate
from ..data.class_check import check_classes_fit_model, train_dataset_names
from ..solver import LRMultiplier
from .module import DetectionModule

__all__ = ["LazyDetectionModule", "build_lazy_trainer", "is_lazy_config", "lazy_evaluate", "lazy_train"]

logger = logging.getLogger(__name__)


def is_lazy_config(cfg: Any) -> bool:
    """Whether ``cfg`` is a LazyConfig (a ``model`` node with ``_target_``), not a composed detlightning config."""
    return isinstance(cfg, DictConfig) and "model" in cfg and isinstance(cfg.model, DictConfig) and (
        "_target_" in cfg.model
    )


def _train_opt(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, f"train.{key}", default=default)


class LazyDetectionModule(DetectionModule):
    """:class:`DetectionModule` for a LazyConfig: the same training step, logging and evaluation, with the model,
    optimizer, schedule, data loaders and evaluator instantiated from the lazy config instead of built from
    registries. The config is stored in checkpoints as yaml text (hyperparameter ``lazy_config``)."""

    def __init__(self, cfg: DictConfig) -> None:
        LightningModule.__init__(self)
        if not is_lazy_config(cfg):
            raise TypeError("LazyDetectionModule needs a LazyConfig (model with _target_); got another config")
        self.cfg = cfg
        self.save_hyperparameters({"lazy_config": _config_text(cfg)})
        self._init_state(self.build_model(cfg))

    @classmethod
    def build_model(cls, cfg: Any) -> torch.nn.Module:
        model = instantiate(cfg.model)
        logger.debug("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        # detectron2's convention: the optimizer config's params.model is the model (here only while building)
        params = cfg.optimizer.params
        previous = params.get("model")
        params.model = model
        try:
            return instantiate(cfg.optimizer)
        finally:
            params.model = previous

    @classmethod
    def build_lr_scheduler(cls, cfg: Any, optimizer: torch.optim.Optimizer) -> LRMultiplier:
        return LRMultiplier(optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=int(cfg.train.max_iter))

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None) -> Any:
        node = OmegaConf.select(cfg, "dataloader.evaluator")
        return None if node is None else instantiate(node)

    def eval_dataset_names(self) -> list[str]:
        if OmegaConf.select(self.cfg, "dataloader.test") is None:
            return []
        names = OmegaConf.select(self.cfg, "dataloader.test.dataset.names", default="test")
        return [names if isinstance(names, str) else ",".join(names)]

    def train_dataloader(self) -> Any:
        loader = instantiate(self.cfg.dataloader.train)
        check_classes_fit_model(self.model, train_dataset_names(self.cfg))  # after the loader registered its data
        return loader

    def val_dataloader(self) -> Any:
        return instantiate(self.cfg.dataloader.test)

    def test_dataloader(self) -> Any:
        return instantiate(self.cfg.dataloader.test)

    def predict_dataloader(self) -> Any:
        return instantiate(self.cfg.dataloader.test)


def _config_text(cfg: DictConfig) -> str:
    """The yaml form of a lazy config (callables by import path); a placeholder when it holds unsaveable values."""
    from ..config.lazy import to_yaml

    try:
        return to_yaml(cfg)
    except Exception:  # objects or lambdas in the config: the checkpoint still holds the weights
        return "# this lazy config holds values yaml cannot represent\n"


def _accelerator(cfg: DictConfig) -> str:
    device = str(_train_opt(cfg, "device", "cuda"))
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            return "gpu"
        logger.warning("train.device=%r but CUDA is not available: training on the CPU", device)
    return "cpu"


def _strategy(cfg: DictConfig, accelerator: str) -> Any:
    """(strategy, devices, num_nodes): DDP with ``train.ddp``'s options when several processes run (``launch``
    started them), else one device."""
    from ..utils import comm

    if comm.get_world_size() == 1:
        return "auto", 1, 1
    from .trainer import _join_launched_processes

    ddp = OmegaConf.to_container(OmegaConf.select(cfg, "train.ddp") or DictConfig({}), resolve=True)
    options: dict[str, Any] = {
        "broadcast_buffers": bool(ddp.get("broadcast_buffers", False)),
        "find_unused_parameters": bool(ddp.get("find_unused_parameters", False)),
    }
    if ddp.get("fp16_compression", False):
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        options["ddp_comm_hook"] = comm_hooks.fp16_compress_hook
    joined = _join_launched_processes(accelerator == "gpu", **options)
    strategy = joined["strategy"]
    return strategy, joined["devices"], joined["num_nodes"]


def build_lazy_trainer(cfg: DictConfig, callbacks: Sequence[Any] | None = None, **overrides: Any) -> Any:
    """A Lightning ``Trainer`` for a lazy config: ``max_steps = train.max_iter``, validation every
    ``train.eval_period`` iterations (0: once, at the end), mixed precision when ``train.amp.enabled``
    (fp16 on CUDA, bf16 on the CPU), DDP with ``train.ddp`` when several processes run, and detlightning's
    callbacks (timer, LR, ``metrics.json`` + console every ``train.log_period``, ``model_XXXXXXX.pth`` every
    ``train.checkpoint_period`` and ``model_final.pth``, ``last.ckpt`` for ``--resume``). ``overrides`` win."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from .callbacks import IterationTimer, LRLogger, MetricsWriter, PeriodicCheckpointer, ResumeState

    out = str(cfg.train.output_dir)
    max_iter = int(cfg.train.max_iter)
    eval_period = int(_train_opt(cfg, "eval_period", 0) or 0)
    checkpoint_period = int(_train_opt(cfg, "checkpoint_period", 0) or 0)
    accelerator = _accelerator(cfg)
    strategy, devices, num_nodes = _strategy(cfg, accelerator)
    precision = "32-true"
    if _train_opt(cfg, "amp.enabled", False):
        precision = "16-mixed" if accelerator == "gpu" else "bf16-mixed"
    has_eval = OmegaConf.select(cfg, "dataloader.test") is not None
    if callbacks is None:
        callbacks = [
            IterationTimer(),
            LRLogger(),
            MetricsWriter(period=int(_train_opt(cfg, "log_period", 20) or 20)),
            PeriodicCheckpointer(period=checkpoint_period, dirpath=out),
            ResumeState(),
            ModelCheckpoint(dirpath=out, filename="model_{step:07d}", save_top_k=0, save_last=True,
                            every_n_train_steps=checkpoint_period or max_iter),
        ]
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": precision,
        "max_steps": max_iter,
        "max_epochs": -1,
        "val_check_interval": eval_period if eval_period > 0 else max_iter,
        "check_val_every_n_epoch": None,
        "limit_val_batches": None if has_eval else 0,
        "num_sanity_val_steps": 0,
        "default_root_dir": out,
        "callbacks": list(callbacks),
        "logger": TensorBoardLogger(save_dir=out, name="tensorboard", version="", default_hp_metric=False),
        "enable_progress_bar": False,
        "benchmark": bool(_train_opt(cfg, "cudnn_benchmark", False)),
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(overrides)
    return Trainer(**kwargs)


def _resume_checkpoint(cfg: DictConfig) -> str | None:
    """``<train.output_dir>/last.ckpt``, or the newest intact ``.ckpt`` there when it is missing or damaged."""
    from ..checkpoint.lightning import find_resume_ckpt

    return find_resume_ckpt(str(cfg.train.output_dir))


def lazy_train(cfg: DictConfig, resume: bool = False, **trainer_overrides: Any) -> dict[str, Any]:
    """Train a lazy config (``resume``: continue from ``<train.output_dir>/last.ckpt``; otherwise start from
    ``train.init_checkpoint``), evaluate at the end, and return the final results. ``resume`` on a complete run
    (last.ckpt at ``train.max_iter``) trains nothing and returns the evaluation of that checkpoint."""
    from .defaults import _evaluate_finished, _final_results, _print_final, _run_is_complete

    module = LazyDetectionModule(cfg)
    ckpt_path = _resume_checkpoint(cfg) if resume else None
    if resume and ckpt_path is None:
        logger.info("--resume but no last.ckpt in %s: starting from train.init_checkpoint", cfg.train.output_dir)
    init = _train_opt(cfg, "init_checkpoint", "")
    if ckpt_path is None and init:
        module.load_weights(init)
    trainer = build_lazy_trainer(cfg, **trainer_overrides)
    max_iter, eval_period = trainer.max_steps, int(_train_opt(cfg, "eval_period", 0) or 0)
    has_eval = OmegaConf.select(cfg, "dataloader.evaluator") is not None
    if ckpt_path is not None and _run_is_complete(ckpt_path, max_iter, "train.max_iter"):
        return _evaluate_finished(module, trainer, ckpt_path, has_eval)
    trainer.fit(module, ckpt_path=ckpt_path)
    # the periodic evaluation misses the last iteration when max_iter is no multiple of eval_period
    if has_eval and eval_period > 0 and max_iter % eval_period != 0 and trainer.global_step >= max_iter:
        trainer.validate(module)
    results = _final_results(module, trainer) if has_eval else {}
    _print_final(results)
    return results


def lazy_evaluate(cfg: DictConfig, **trainer_overrides: Any) -> dict[str, Any]:
    """Evaluate ``train.init_checkpoint`` on ``dataloader.test`` with ``dataloader.evaluator`` (``--eval-only``)."""
    from .defaults import _final_results, _print_final

    module = LazyDetectionModule(cfg)
    init = _train_opt(cfg, "init_checkpoint", "")
    if init:
        module.load_weights(init)
    else:
        logger.warning("--eval-only with an empty train.init_checkpoint: evaluating randomly initialised weights")
    trainer = build_lazy_trainer(cfg, **trainer_overrides)
    trainer.test(module)
    results = _final_results(module, trainer)
    _print_final(results)
    return results
