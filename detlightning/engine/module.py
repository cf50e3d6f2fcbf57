"""``DetectionModule``: the LightningModule around a detectron2-style meta-architecture.

It replaces detectron2's ``DefaultTrainer`` + ``SimpleTrainer``: the model is the plain ``nn.Module`` at
``module.model``; losses are summed and logged every step; validation/test feed one ``DatasetEvaluator`` per
dataset in ``datasets.test`` and log the flattened results (``bbox/AP``, ``segm/AP50``, ...). Customise the way one
subclasses ``DefaultTrainer``: override the ``build_model`` / ``build_optimizer`` / ``build_lr_scheduler`` /
``build_evaluator`` classmethods (same signatures as detectron2's).
"""
from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..evaluation.testing import flatten_results_dict
from ..modeling.fast_inference import set_inference_precision
from ..solver import clip_gradients, clips_gradients
from ..utils.events import EventStorage, check_losses_finite
from .builders import DefaultBuilders

__all__ = ["DetectionModule", "cfg_to_container"]

logger = logging.getLogger(__name__)


def cfg_to_container(cfg: Any) -> dict[str, Any]:
    """A resolved plain ``dict`` of ``cfg`` (a DictConfig or mapping): what goes into checkpoints, since the safe
    checkpoint loader refuses OmegaConf objects."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)  # type: ignore[return-value]
    raise TypeError(f"DetectionModule expects a DictConfig or a dict config, got {type(cfg).__name__}")


class DetectionModule(DefaultBuilders, LightningModule):
    """Train / evaluate / predict a detection model built from ``cfg``.

    Args:
        cfg: the composed config (``detlightning.config.compose(...)``) or its plain-dict form. It is saved as the
            hyperparameter ``cfg`` (a plain dict), so ``DetectionModule.load_from_checkpoint(path)`` rebuilds the
            same model in one call.

    Batches are ``list[dict]`` (detectron2's model input format); ``predict_step`` returns the model's
    ``list[dict]`` outputs (``{"instances": Instances, ...}`` per image).
    """

    def __init__(self, cfg: Any):
        super().__init__()
        plain = cfg_to_container(cfg)
        self.save_hyperparameters({"cfg": plain})
        self.cfg: DictConfig = OmegaConf.create(plain)
        OmegaConf.set_struct(self.cfg, True)
        self._init_state(self.build_model(self.cfg))
        # test.precision: validation / test run the dense parts in bf16 or fp16 (training steps are not affected)
        set_inference_precision(self.model, OmegaConf.select(self.cfg, "test.precision", default=None) or "fp32")

    def _init_state(self, model: nn.Module) -> None:
        """The model and the run state every module variant keeps (storage, evaluators, last results)."""
        self.model: nn.Module = model
        # One storage for the whole run: writers (JSON, console) smooth over its history like detectron2's.
        self.storage = EventStorage(0)
        self._evaluators: dict[str, Any] = {}
        self._eval_names: list[str] = []
        self._eval_active: list[Any] = []
        # test.aug.enabled: the GeneralizedRCNNWithTTA wrapper of this evaluation (a dict, so the wrapper is not
        # registered as a submodule and its parameters do not appear twice in checkpoints)
        self._eval_wrapper: dict[str, nn.Module] = {}
        self.last_results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.last_eval_step: int = -1

    # ------------------------------------------------------------------------------------------- training
    def forward(self, batched_inputs: list[dict[str, Any]]) -> Any:
        return self.model(batched_inputs)

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        storage = self.storage
        storage.iter = self.global_step
        with storage:
            loss_dict = self.model(batch)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        if not isinstance(loss_dict, Mapping) or not loss_dict:
            raise TypeError(f"model returned {type(loss_dict).__name__} in training mode; expected a dict of losses")
        # one small collective per step: like detectron2, every rank stops on a NaN anywhere and the logged
        # losses are the average over ranks, not rank 0's alone
        stacked = torch.stack([v.detach().float().sum() for v in loss_dict.values()])
        if self._trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
        values = check_losses_finite(dict(zip(loss_dict.keys(), stacked.tolist())), self.global_step)
        losses = sum(loss_dict.values())
        total = sum(values.values())
        storage.put_scalars(total_loss=total, **values)
        bs = len(batch)
        self.log("total_loss", total, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        for name, value in values.items():
            if name != "total_loss":
                self.log(name, value, on_step=True, on_epoch=False, batch_size=bs)
        # scalars the model (or a callback) put for this iteration, e.g. fast_rcnn/cls_accuracy
        for name, (value, it) in storage.latest().items():
            if it == self.global_step and name not in values and name != "total_loss":
                self.log(name, float(value), on_step=True, on_epoch=False, batch_size=bs)
        return losses

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer(self.cfg, self.model)
        scheduler = self.build_lr_scheduler(self.cfg, optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Runs after AMP unscaling. solver.clip_gradients wins over the Trainer's gradient_clip_val: the optimizer
        # from build_optimizer clips in its own step(); one from an overridden build_optimizer is clipped here.
        clip_cfg = OmegaConf.select(self.cfg, "solver.clip_gradients")
        if clip_cfg is not None and clip_cfg.get("enabled", False):
            if not clips_gradients(optimizer):
                clip_gradients(itertools.chain(*[g["params"] for g in optimizer.param_groups]), clip_cfg)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------------------------------ evaluation
    def eval_dataset_names(self) -> list[str]:
        """The datasets that validation/test dataloaders serve, in dataloader order."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "test_dataset_names", None)
        return list(names) if names is not None else list(OmegaConf.select(self.cfg, "datasets.test") or [])

    def _get_evaluator(self, name: str) -> Any:
        if name not in self._evaluators:
            self._evaluators[name] = self.build_evaluator(self.cfg, name)
        return self._evaluators[name]

    def eval_model(self) -> nn.Module:
        """What validation and test run on each batch: ``self.model``, or with ``test.aug.enabled``
        (TEST.AUG.ENABLED) ``GeneralizedRCNNWithTTA(cfg, self.model)``; the results keep their usual keys."""
        if not OmegaConf.select(self.cfg, "test.aug.enabled", default=False):
            return self.model
        wrapper = self._eval_wrapper.get("tta")
        if wrapper is None or wrapper.model is not self.model:
            from ..modeling.test_time_augmentation import GeneralizedRCNNWithTTA

            wrapper = GeneralizedRCNNWithTTA(self.cfg, self.model)
            self._eval_wrapper["tta"] = wrapper
        return wrapper

    def _start_eval(self) -> None:
        self._eval_names = self.eval_dataset_names()
        self._eval_active = [self._get_evaluator(n) for n in self._eval_names]
        for ev in self._eval_active:
            if ev is not None:
                ev.reset()

    def _eval_step(self, batch: list[dict[str, Any]], dataloader_idx: int) -> list[dict[str, Any]]:
        outputs = self.eval_model()(batch)
        if dataloader_idx < len(self._eval_active) and self._eval_active[dataloader_idx] is not None:
            self._eval_active[dataloader_idx].process(batch, outputs)
        return outputs

    def _finish_eval(self) -> None:
        from ..utils import comm

        results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for name, ev in zip(self._eval_names, self._eval_active):
            if ev is None:
                continue
            res = ev.evaluate() or {}
            # distributed evaluators return results on rank 0 only; every rank logs the same values
            res = self.trainer.strategy.broadcast(res, src=0)
            results[name] = res
            if comm.is_main_process() and res:
                logger.info("Evaluation results for %s in csv format:", name)
                try:
                    from ..evaluation import print_csv_format

                    print_csv_format(res)
                except ImportError:
                    logger.info("%s", res)
        flat: dict[str, float] = {}
        for name, res in results.items():
            prefix = "" if len(results) == 1 else f"{name}/"
            for key, value in flatten_results_dict(res).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    flat[prefix + key] = float(value)
        if flat:
            # identical on every rank (broadcast above): syncing only averages equal values
            self.log_dict(flat, on_step=False, on_epoch=True, sync_dist=self.trainer.world_size > 1, batch_size=1)
            for key, value in flat.items():
                # at the iteration just finished (0-based), as detectron2's EvalHook does (metrics.json gets them on
                # a line of that iteration) rather than at the next iteration, whose training line they would hide
                self.storage.put_scalar(key, value, smoothing_hint=False, cur_iter=max(self.global_step - 1, 0))
        self.last_results = results
        self.last_eval_step = self.global_step

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(
        self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        # the outputs reach callbacks' on_validation_batch_end (e.g. VisualizePredictions)
        return self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a partial pass: its metrics mean nothing
            return
        self._finish_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._finish_eval()

    def predict_step(
        self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        return self.model(batch)

    # --------------------------------------------------------------------------------------------- weights
    def load_weights(self, path: str) -> None:
        """Load model weights (detectron2 .pth/.pkl, model-zoo URL, or a Lightning .ckpt) into ``self.model``, as
        ``DetectionCheckpointer(model).load(path)`` does (``model.weights``)."""
        from ..checkpoint import DetectionCheckpointer

        DetectionCheckpointer(self.model).load(path)
