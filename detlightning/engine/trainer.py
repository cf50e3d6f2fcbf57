"""detectron2's ``DefaultTrainer``, running its loop through Lightning.

Written the detectron2 way::

    trainer = DefaultTrainer(cfg)          # cfg: get_cfg() CfgNode (or our composed config)
    trainer.resume_or_load(resume=False)
    trainer.train()

The model, optimizer, LR scheduler, loaders and evaluators come from the overridable classmethods
(``build_model``, ``build_optimizer``, ``build_lr_scheduler``, ``build_train_loader``, ``build_test_loader``,
``build_evaluator``); ``build_hooks`` gives detectron2's default hooks (iteration timer, LR scheduler, PreciseBN,
periodic checkpointer, evaluation, periodic writers) and ``register_hooks`` adds yours. A
``lightning.pytorch.Trainer`` runs the iterations (device, precision from ``SOLVER.AMP.ENABLED``, and under
:func:`detlightning.engine.launch` the already started processes as a DDP strategy); the hooks run inside its loop
with detectron2's order and ``trainer.iter`` values. Checkpoints (``model_XXXXXXX.pth``, ``model_final.pth``,
``last_checkpoint``), ``metrics.json`` and TensorBoard events go to ``OUTPUT_DIR`` as detectron2 writes them.

The Lightning-native path (``DetectionModule``, callbacks, ``scripts/train.py``) stays the recommended one.
"""
from __future__ import annotations

import copy
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from ..checkpoint import DetectionCheckpointer
from ..config.reader import cfg_view, is_cfg_node
from ..data import build_detection_test_loader, build_detection_train_loader
from ..data.class_check import check_classes_fit_model, train_dataset_names
from ..data.datamodule import EpochView
from ..evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset, print_csv_format
from ..layers.batch_norm import get_bn_modules
from ..utils import comm
from ..utils.events import EventStorage, EventWriter, check_losses_finite
from . import hooks
from .builders import DefaultBuilders
from .defaults import default_writers
from .train_loop import TrainerBase

__all__ = ["DefaultTrainer"]

logger = logging.getLogger(__name__)


class _StepModule(LightningModule):
    """What Lightning drives: one detectron2 iteration (forward, loss sum, metrics into the storage)."""

    def __init__(self, owner: DefaultTrainer) -> None:
        super().__init__()
        self.model = owner.model
        self._owner = weakref.proxy(owner)

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        loss_dict = self.model(batch)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        values = torch.stack([v.detach().float() for v in loss_dict.values()])
        if self._trainer is not None and self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        per_loss = dict(zip(loss_dict, values.tolist()))
        check_losses_finite(per_loss, self._owner.iter)
        self._owner.storage.put_scalars(total_loss=sum(per_loss.values()), **per_loss)
        return sum(loss_dict.values())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the LR schedule is stepped by the LRScheduler hook, as in detectron2
        return self._owner.optimizer

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        return None  # SOLVER.CLIP_GRADIENTS: the optimizer from build_optimizer clips in its step()


class _HookBridge(Callback):
    """Calls the DefaultTrainer's hooks from Lightning's loop, keeping ``iter`` and ``storage.iter`` in step."""

    def __init__(self, owner: DefaultTrainer) -> None:
        self.owner = weakref.proxy(owner)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.owner.before_train()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.owner.iter = self.owner.start_iter + trainer.global_step
        self.owner.storage.iter = self.owner.iter
        self.owner.before_step()

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.owner.after_backward()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.owner.after_step()


class DefaultTrainer(DefaultBuilders, TrainerBase):
    """detectron2's ``DefaultTrainer`` (see the module docstring). Attributes: ``cfg``, ``model``, ``optimizer``,
    ``scheduler``, ``data_loader``, ``checkpointer``, ``iter``, ``start_iter``, ``max_iter``, ``storage``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        view = cfg_view(cfg)
        self.output_dir = str(view.paths.output_dir or "./output")
        self.model: nn.Module = self.build_model(cfg)
        self.optimizer = self.build_optimizer(cfg, self.model)
        self.data_loader = self.build_train_loader(cfg)
        check_classes_fit_model(self.model, train_dataset_names(cfg))
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.checkpointer = DetectionCheckpointer(
            self.model, self.output_dir, trainer=weakref.proxy(self), save_to_disk=comm.is_main_process()
        )
        self.start_iter = 0
        self.max_iter = int(view.solver.max_iter)
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------------------------ detectron2's API
    def resume_or_load(self, resume: bool = True) -> None:
        """``resume`` and a ``last_checkpoint`` in OUTPUT_DIR: continue from it (model, optimizer, scheduler,
        iteration, hooks). Otherwise load ``MODEL.WEIGHTS`` (model only) and start at iteration 0."""
        self.checkpointer.resume_or_load(cfg_view(self.cfg).model.weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the last finished iteration
            self.start_iter = self.iter + 1

    def build_hooks(self) -> list[hooks.HookBase | None]:
        """detectron2's default hooks, in its order; ``None`` entries are skipped by ``register_hooks``."""
        view = cfg_view(self.cfg)
        eval_period = int(view.solver.eval_period)
        precise_bn: hooks.HookBase | None = None
        if view.callbacks.precise_bn.enabled and get_bn_modules(self.model):
            bn_cfg = copy.deepcopy(self.cfg)
            if is_cfg_node(bn_cfg):
                bn_cfg.defrost()
                bn_cfg.DATALOADER.NUM_WORKERS = 0  # a short-lived loader: no worker processes
            precise_bn = hooks.PreciseBN(
                eval_period, self.model, self.build_train_loader(bn_cfg), int(view.callbacks.precise_bn.num_iter)
            )

        def evaluate_and_keep() -> OrderedDict[str, Any]:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        main = comm.is_main_process()
        checkpoint_period = int(view.solver.checkpoint_period)
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            precise_bn,
            hooks.PeriodicCheckpointer(self.checkpointer, checkpoint_period, max_iter=self.max_iter) if main else None,
            hooks.EvalHook(eval_period, evaluate_and_keep),
            hooks.PeriodicWriter(self.build_writers(), period=20) if main else None,
        ]

    def register_hooks(self, hook_list: Sequence[hooks.HookBase | None]) -> None:
        super().register_hooks([h for h in hook_list if h is not None])

    def build_writers(self) -> list[EventWriter]:
        """The console line, ``metrics.json`` and TensorBoard in OUTPUT_DIR."""
        return default_writers(self.output_dir, self.max_iter)

    def train(self) -> OrderedDict[str, Any] | None:  # type: ignore[override]
        """Run iterations ``start_iter .. max_iter - 1`` through Lightning; returns the last evaluation results."""
        logger.info("Starting training from iteration %d", self.start_iter)
        steps = self.max_iter - self.start_iter
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                if steps > 0:
                    pl_trainer = self._lightning_trainer(steps)
                    loader = EpochView(self.data_loader, steps)
                    pl_trainer.fit(_StepModule(self), train_dataloaders=loader)
                self.iter = self.max_iter  # as detectron2: one past the last iteration once training is done
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        return getattr(self, "_last_eval_results", None)

    def _lightning_trainer(self, steps: int) -> Trainer:
        view = cfg_view(self.cfg)
        on_gpu = str(view.model.device).startswith("cuda") and torch.cuda.is_available()
        kwargs: dict[str, Any] = {
            "accelerator": "gpu" if on_gpu else "cpu", "devices": 1, "max_steps": steps, "max_epochs": -1,
            "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "use_distributed_sampler": False, "callbacks": [_HookBridge(self)],
            "default_root_dir": self.output_dir, "benchmark": bool(view.trainer.benchmark),
        }
        if view.solver.amp.enabled:
            kwargs["precision"] = "16-mixed" if on_gpu else "bf16-mixed"
        if comm.get_world_size() > 1:
            kwargs.update(_join_launched_processes(on_gpu))
        return Trainer(**kwargs)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        if "scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["scheduler"])

    # ------------------------------------------------------------------------------ overridable builders
    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Any:
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def test(cls, cfg: Any, model: nn.Module,
             evaluators: DatasetEvaluator | Sequence[DatasetEvaluator | None] | None = None) -> OrderedDict[str, Any]:
        """Evaluate ``model`` on every dataset of ``DATASETS.TEST``; ``evaluators``: one per dataset (default:
        ``build_evaluator``). Returns ``{dataset: results}`` (the results alone for a single dataset)."""
        names = list(cfg_view(cfg).datasets.test or [])
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(
                f"DefaultTrainer.test: {len(evaluators)} evaluators for {len(names)} test datasets {names}"
            )
        results: OrderedDict[str, Any] = OrderedDict()
        for i, name in enumerate(names):
            evaluator = evaluators[i] if evaluators is not None else cls.build_evaluator(cfg, name)
            if evaluator is None:
                logger.warning("No evaluator for %s: skipped (override build_evaluator or pass evaluators=)", name)
                continue
            if isinstance(evaluator, Sequence):
                evaluator = DatasetEvaluators(list(evaluator))
            results[name] = inference_on_dataset(model, cls.build_test_loader(cfg, name), evaluator)
            if comm.is_main_process() and results[name]:
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    @classmethod
    def test_with_TTA(cls, cfg: Any, model: nn.Module) -> OrderedDict[str, Any]:  # noqa: N802  (detectron2's name)
        """:meth:`test` through ``GeneralizedRCNNWithTTA(cfg, model)`` (TEST.AUG sizes and flip), evaluators writing
        to ``OUTPUT_DIR/inference_TTA``; the result keys get a ``_TTA`` suffix (``bbox_TTA`` for one dataset,
        ``<dataset>_TTA`` for several), as detectron2's train_net.py returns them."""
        from ..modeling.test_time_augmentation import GeneralizedRCNNWithTTA

        logger.info("Running inference with test-time augmentation ...")
        tta_model = GeneralizedRCNNWithTTA(cfg, model)
        folder = os.path.join(str(cfg_view(cfg).paths.output_dir or "./output"), "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=folder) for name in cfg_view(cfg).datasets.test]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())

    @staticmethod
    def auto_scale_workers(cfg: Any, num_workers: int) -> Any:
        """``cfg`` rescaled from ``SOLVER.REFERENCE_WORLD_SIZE`` processes to ``num_workers`` (detectron2's linear
        scaling: batch size and learning rate up, iteration counts down); ``cfg`` itself when no rescaling applies
        (reference size 0 or equal, or not a CfgNode)."""
        if not is_cfg_node(cfg):
            return cfg
        reference = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
        if reference in (0, num_workers):
            return cfg
        scale = num_workers / reference
        out = cfg.clone()
        was_frozen = out.is_frozen()
        out.defrost()
        solver = out.SOLVER
        batch = int(round(solver.IMS_PER_BATCH * scale))
        solver.IMS_PER_BATCH = batch
        solver.BASE_LR = solver.BASE_LR * scale
        for key in ("MAX_ITER", "WARMUP_ITERS", "CHECKPOINT_PERIOD"):
            solver[key] = int(round(solver[key] / scale))
        solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
        out.TEST.EVAL_PERIOD = int(round(out.TEST.EVAL_PERIOD / scale))
        solver.REFERENCE_WORLD_SIZE = num_workers
        logger.info("Auto-scaling the config to batch_size=%d, learning_rate=%s, max_iter=%d, warmup=%d.",
                    batch, solver.BASE_LR, solver.MAX_ITER, solver.WARMUP_ITERS)
        if was_frozen:
            out.freeze()
        return out


def _join_launched_processes(on_gpu: bool, **ddp_kwargs: Any) -> dict[str, Any]:
    """Lightning settings that reuse the process group ``launch`` created (Lightning starts no processes).
    ``ddp_kwargs`` go to ``DDPStrategy`` (``broadcast_buffers``, ``ddp_comm_hook``, ...)."""
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    os.environ["LOCAL_RANK"] = str(comm.get_local_rank())
    os.environ["NODE_RANK"] = str(comm.get_rank() // comm.get_local_size())
    env = LightningEnvironment()
    env.world_size = lambda: comm.get_world_size()  # type: ignore[method-assign]
    env.global_rank = lambda: comm.get_rank()  # type: ignore[method-assign]
    return {
        "devices": comm.get_local_size(),
        "num_nodes": comm.get_world_size() // comm.get_local_size(),
        "strategy": DDPStrategy(
            cluster_environment=env, process_group_backend="nccl" if on_gpu else "gloo", **ddp_kwargs
        ),
    }
