"""Lightning callbacks in place of detectron2's hooks and EventWriters.

================================  =========================================================
detectron2                        detlightning
================================  =========================================================
``hooks.IterationTimer``          ``IterationTimer`` (``time``, ``data_time``; ETA in the printer)
``hooks.LRScheduler`` (lr log)    ``LRLogger`` (the schedule itself is stepped by Lightning)
``hooks.PeriodicCheckpointer``    ``PeriodicCheckpointer`` (``model_XXXXXXX.pth``) + Lightning's ``ModelCheckpoint``
``hooks.BestCheckpointer``        ``BestCheckpointer`` (``model_best.pth`` + ``model_best.ckpt``)
``hooks.EvalHook``                Trainer ``val_check_interval`` (from ``solver.eval_period``)
``hooks.PreciseBN``               ``PreciseBN``
``JSONWriter``                    ``MetricsWriter`` (``metrics.json``)
``CommonMetricPrinter``           ``MetricsWriter`` (console line)
``TensorboardXWriter``            Lightning's TensorBoardLogger (every ``self.log``) + ``VisualizePredictions``
(max_mem in the printer)          ``MemoryStats``
(resume)                          ``ResumeState`` (sampler position + RNG states in every ``.ckpt``)
================================  =========================================================

Scalars go through ``DetectionModule.storage`` (an ``EventStorage``), exactly where detectron2's writers read them.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from ..layers.batch_norm import update_bn_stats
from ..utils import comm
from ..utils.events import CommonMetricPrinter, EventStorage, JSONWriter
from .checkpoint_io import use_atomic_checkpoint_io
from .hooks import LRScheduler

__all__ = [
    "BestCheckpointer",
    "IterationTimer",
    "LRLogger",
    "MemoryStats",
    "MetricsWriter",
    "PeriodicCheckpointer",
    "PreciseBN",
    "ResumeState",
    "VisualizePredictions",
]

logger = logging.getLogger(__name__)


def _storage(pl_module: LightningModule) -> EventStorage:
    storage = getattr(pl_module, "storage", None)
    if not isinstance(storage, EventStorage):
        raise TypeError(f"{type(pl_module).__name__} has no EventStorage 'storage': use DetectionModule")
    return storage


def _output_dir(trainer: Trainer, pl_module: LightningModule, subdir: str = "") -> str:
    cfg = getattr(pl_module, "cfg", None)
    out = None
    if cfg is not None:
        try:
            out = cfg.paths.output_dir
        except (AttributeError, KeyError):
            out = None
    return os.path.join(out or trainer.default_root_dir, subdir)


class IterationTimer(Callback):
    """Put ``data_time`` (waiting for the batch) and ``time`` (the whole iteration) into the storage."""

    def __init__(self) -> None:
        self._last_end: float | None = None
        self._start: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is None:
            self._last_end = now
        self._start = self._last_end
        _storage(pl_module).put_scalar("data_time", now - self._last_end, cur_iter=trainer.global_step)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._start is not None:
            storage = _storage(pl_module)
            storage.put_scalar("time", now - self._start, cur_iter=storage.iter)
            pl_module.log("time", now - self._start, on_step=True, on_epoch=False, batch_size=1)
        self._last_end = now

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # evaluation time is not data time for the next iteration
        self._last_end = time.perf_counter()


class LRLogger(Callback):
    """Log the LR used by this iteration as ``lr`` (of the param group detectron2's ``LRScheduler`` hook picks:
    ``hooks.LRScheduler.get_best_param_group_id``)."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not trainer.optimizers:
            return
        optimizer = trainer.optimizers[0]
        lr = float(optimizer.param_groups[LRScheduler.get_best_param_group_id(optimizer)]["lr"])
        # DetectionModule.training_step forwards this iteration's storage scalars to self.log
        _storage(pl_module).put_scalar("lr", lr, smoothing_hint=False, cur_iter=trainer.global_step)


class MemoryStats(Callback):
    """Put ``max_mem`` (MiB): peak CUDA memory allocated on GPU, peak resident set size of the process on CPU."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        storage = _storage(pl_module)
        if pl_module.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        else:
            mem = _peak_rss_mib()
            if mem is None:
                return
        storage.put_scalar("max_mem", mem, smoothing_hint=False, cur_iter=storage.iter)
        pl_module.log("max_mem", mem, on_step=True, on_epoch=False, batch_size=1)


def _peak_rss_mib() -> float | None:
    """Peak resident set size of this process in MiB (Linux/macOS), None where the OS does not tell."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class MetricsWriter(Callback):
    """Every ``period`` iterations (and at the end): append to ``<output_dir>/metrics.json`` one line per iteration
    (detectron2's JSONWriter), log detectron2's one-line summary (CommonMetricPrinter) and send the images the model
    put into the EventStorage (``vis_period``) to the TensorBoard logger. Main process only."""

    def __init__(self, period: int = 20, json_file: str | None = None, print_metrics: bool = True,
                 window_size: int = 20):
        if period <= 0:
            raise ValueError(f"MetricsWriter period must be positive, got {period}")
        self.period = period
        self.json_file = json_file
        self.print_metrics = print_metrics
        self.window_size = window_size
        self._json: JSONWriter | None = None
        self._path: str | None = None
        self._last_write = -1
        self._printer: CommonMetricPrinter | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not comm.is_main_process() or trainer.global_rank != 0:
            return
        if self._json is None:
            path = self.json_file or os.path.join(_output_dir(trainer, pl_module), "metrics.json")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._json = JSONWriter(path, window_size=self.window_size)
            self._json._last_write = self._last_write  # what an earlier fit/validate of this run wrote
            self._path = path
        max_iter = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._printer = CommonMetricPrinter(max_iter, window_size=self.window_size)

    def _write(self, trainer: Trainer, pl_module: LightningModule, print_line: bool, late: bool = False) -> None:
        if self._json is None:
            return
        with _storage(pl_module) as storage:
            self._json.write_late() if late else self._json.write()
            if print_line and self.print_metrics and self._printer is not None and storage.histories():
                self._printer.write()
            _send_images(trainer, storage)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        it = trainer.global_step  # iterations done
        if it % self.period == 0 or it == trainer.max_steps:
            self._write(trainer, pl_module, print_line=it != trainer.max_steps)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run (global_step k restored from a checkpoint) redoes iterations k, k+1, ...: the lines the
        # killed run wrote for them go, so that each iteration has one line.
        if self._json is None or self._path is None or trainer.global_step <= 0:
            return
        path = self._path
        self._json.close()
        dropped, last = _truncate_metrics(path, trainer.global_step)
        if dropped:
            logger.info("Resuming at iteration %d: dropped %d lines of later iterations from %s",
                        trainer.global_step, dropped, path)
        self._json = JSONWriter(path, window_size=self.window_size)
        self._json._last_write = max(last, trainer.global_step - 1)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the evaluation is recorded at the iteration it followed, whose training line may be written already
        if not trainer.sanity_checking:
            self._write(trainer, pl_module, print_line=False, late=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, print_line=False)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # closed after each fit/validate/test; the next one's setup reopens the file in append mode
        if self._json is not None:
            self._last_write = self._json._last_write
            self._json.close()
            self._json = None


def _truncate_metrics(path: str, next_iter: int) -> tuple[int, int]:
    """Rewrite the JSON-lines file ``path`` without the lines of the iterations a resumed run redoes (``iteration``
    >= ``next_iter``, 0-based; an evaluation after ``next_iter`` iterations is recorded at ``next_iter - 1`` and
    stays) and without lines torn by a kill, atomically (a temporary file in the same folder, fsync,
    rename). Returns (lines dropped, the last iteration kept or -1)."""
    if not os.path.isfile(path):
        return 0, -1
    with open(path) as f:
        lines = f.readlines()
    kept: list[str] = []
    last = -1
    for line in lines:
        try:
            record = json.loads(line)
            it = record["iteration"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by the kill
        if isinstance(it, int) and it >= next_iter:  # iterations next_iter, next_iter + 1, ... are redone
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
        last = max(last, it) if isinstance(it, int) else last
    if len(kept) == len(lines):
        return 0, last
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(lines) - len(kept), last


def _send_images(trainer: Trainer, storage: Any) -> None:
    """The storage's images (``put_image``) to every TensorBoard logger, then dropped from the storage."""
    if not storage.vis_data:
        return
    writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    for name, image, step in storage.vis_data:
        for writer in writers:
            writer.add_image(name, image, step)
    storage.clear_images()


class PeriodicCheckpointer(Callback):
    """Write ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end of training,
    loadable by ``DetectionCheckpointer(model).load(path)`` (and detectron2's). Lightning's ``ModelCheckpoint``
    writes the full training state (``.ckpt``) beside it. ``period`` 0: only the final one.

    The schedule and ``max_to_keep`` are those of :class:`detlightning.checkpoint.PeriodicCheckpointer` (the one
    plain loops use), driven with the 0-based index of the iteration just finished."""

    def __init__(self, period: int = 5000, dirpath: str | None = None, save_final: bool = True,
                 max_to_keep: int | None = None):
        self.period = int(period)
        self.dirpath = dirpath
        self.save_final = save_final
        self.max_to_keep = max_to_keep
        self._periodic: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        use_atomic_checkpoint_io(trainer)  # ModelCheckpoint's .ckpt files: crash-safe like our .pth files

    def _checkpointer(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        from ..checkpoint import DetectionCheckpointer
        from ..checkpoint import PeriodicCheckpointer as IterationCheckpointer

        if self._periodic is None:
            directory = self.dirpath or _output_dir(trainer, pl_module, "checkpoints")
            checkpointer = DetectionCheckpointer(pl_module.model, save_dir=directory,
                                                 save_to_disk=comm.is_main_process())
            # period 0 (final only) still needs a schedule object; it is never stepped
            self._periodic = IterationCheckpointer(checkpointer, max(self.period, 1), max_to_keep=self.max_to_keep)
        return self._periodic

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.period > 0:
            # d2-parity: detectron2 names a checkpoint after the last finished iteration (0-based)
            self._checkpointer(trainer, pl_module).step(trainer.global_step - 1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_final:
            self._checkpointer(trainer, pl_module).save("model_final", iteration=trainer.global_step - 1)


class BestCheckpointer(Callback):
    """After each evaluation, if ``val_metric`` (e.g. ``bbox/AP``) improved (``mode`` max or min), write
    ``model_best.pth`` and ``model_best.ckpt`` (detectron2's BestCheckpointer)."""

    def __init__(self, val_metric: str = "bbox/AP", mode: str = "max", dirpath: str | None = None,
                 file_prefix: str = "model_best"):
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}")
        self.val_metric, self.mode, self.dirpath, self.file_prefix = val_metric, mode, dirpath, file_prefix
        self.best_metric: float | None = None
        self.best_iter: int | None = None
        self._warned = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        use_atomic_checkpoint_io(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_metric = state_dict.get("best_metric")
        self.best_iter = state_dict.get("best_iter")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.val_metric)
        if value is None:
            if not self._warned:
                logger.warning("BestCheckpointer: metric %r was not logged by the evaluation; known: %s",
                               self.val_metric, sorted(trainer.callback_metrics))
                self._warned = True
            return
        value = float(value)
        if value != value:  # NaN never improves
            return
        if self.best_metric is not None:
            improved = value > self.best_metric if self.mode == "max" else value < self.best_metric
            if not improved:
                return
        self.best_metric, self.best_iter = value, trainer.global_step
        directory = self.dirpath or _output_dir(trainer, pl_module, "checkpoints")
        logger.info("Saving best model at iteration %d: %s = %.4f", trainer.global_step, self.val_metric, value)
        trainer.save_checkpoint(os.path.join(directory, f"{self.file_prefix}.ckpt"))
        if comm.is_main_process():
            from ..checkpoint import DetectionCheckpointer

            DetectionCheckpointer(pl_module.model, save_dir=directory).save(
                self.file_prefix, iteration=trainer.global_step - 1
            )


class PreciseBN(Callback):
    """Before each evaluation during training, recompute BatchNorm running statistics as the true average over
    ``num_iter`` training batches (detectron2's ``hooks.PreciseBN``, TEST.PRECISE_BN). No-op when disabled or when
    the model has no BatchNorm in training mode (e.g. FrozenBN backbones)."""

    def __init__(self, enabled: bool = False, num_iter: int = 200):
        self.enabled = enabled
        self.num_iter = int(num_iter)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit" or self.num_iter <= 0:
            return
        model: nn.Module = pl_module.model
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and any(p.requires_grad for p in m.parameters())]
        if not bns:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "build_train_loader"):
            logger.warning("PreciseBN needs a DetectionDataModule (build_train_loader); skipped")
            return
        logger.info("Running PreciseBN over %d iterations ...", self.num_iter)
        update_bn_stats(model, dm.build_train_loader(), self.num_iter, bn_modules=bns)


class VisualizePredictions(Callback):
    """At each evaluation, draw the predictions of the first ``num_images`` images of the first evaluation dataset
    with :class:`~detlightning.utils.visualizer.Visualizer` (instances with score >= ``score_thresh``: boxes,
    class names, masks, keypoints; else the semantic or panoptic segmentation) and add them to TensorBoard as
    ``predictions/<i>`` (detectron2's ``VIS_PERIOD`` role, at evaluation time)."""

    def __init__(self, num_images: int = 4, score_thresh: float = 0.5, max_boxes: int = 30, min_side: int = 320):
        self.num_images, self.score_thresh, self.max_boxes = int(num_images), float(score_thresh), int(max_boxes)
        self.min_side = int(min_side)  # small images (e.g. shapes') are drawn enlarged so labels stay readable
        self._seen = 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen = 0

    def _tensorboard(self, trainer: Trainer) -> Any:
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        return None

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or self._seen >= self.num_images or trainer.global_rank != 0:
            return
        writer = self._tensorboard(trainer)
        if writer is None:
            return
        preds = outputs if isinstance(outputs, list) else None
        if preds is None:
            with torch.no_grad():
                preds = pl_module.model(batch[: self.num_images - self._seen])
        preds = preds[: self.num_images - self._seen]
        metadata = _metadata(pl_module)
        channel_format = str(getattr(getattr(pl_module, "cfg", None), "input", {}).get("format", "BGR"))
        for inp, pred in zip(batch, preds):
            img = _draw(inp, pred, metadata, channel_format, self.score_thresh, self.max_boxes, self.min_side)
            if img is not None:
                writer.add_image(f"predictions/{self._seen}", img, trainer.global_step)
            self._seen += 1


def _metadata(pl_module: LightningModule) -> Any:
    try:
        from ..data.catalog import MetadataCatalog

        names = pl_module.eval_dataset_names()  # type: ignore[operator]
        return MetadataCatalog.get(names[0]) if names else None
    except Exception:  # visualisation is best-effort: never break evaluation
        return None


def _draw(inp: dict[str, Any], pred: dict[str, Any], metadata: Any, channel_format: str,
          score_thresh: float, max_boxes: int, min_side: int = 0) -> torch.Tensor | None:
    """The input image at the size of the predictions (the original image's ``height`` x ``width``, enlarged so
    that its short side is at least ``min_side``), RGB, with the predictions drawn: a (3, H', W') uint8 tensor, or
    None if there is no image."""
    from ..utils.visualizer import Visualizer

    image = inp.get("image")
    if image is None:
        return None
    image = image.detach().cpu().float()
    if channel_format == "BGR":
        image = image.flip(0)
    # predictions are in the original image's coordinates; the input tensor may have been resized
    h, w = int(inp.get("height", image.shape[-2])), int(inp.get("width", image.shape[-1]))
    if (h, w) != tuple(image.shape[-2:]):
        image = torch.nn.functional.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    rgb = image.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    vis = Visualizer(rgb, metadata, scale=max(1.0, min_side / min(h, w)))
    if "panoptic_seg" in pred:
        seg, segments_info = pred["panoptic_seg"]
        out = vis.draw_panoptic_seg(seg.cpu(), segments_info)
    elif "instances" in pred:
        inst = pred["instances"].to("cpu")
        inst = inst[inst.scores >= score_thresh][:max_boxes]
        out = vis.draw_instance_predictions(inst)
    elif "sem_seg" in pred:
        out = vis.draw_sem_seg(pred["sem_seg"].argmax(dim=0).cpu())
    else:
        return None
    return torch.from_numpy(out.get_image().copy()).permute(2, 0, 1).contiguous()


def _rng_states() -> dict[str, Any]:
    """This process's python / numpy / torch (CPU and initialised CUDA devices) RNG states, as plain values and
    tensors (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _find_in_loader(root: Any, kind: type | tuple[type, ...], max_depth: int = 8) -> list[Any]:
    """The objects of type ``kind`` reachable from a loader through object attributes (EpochView -> DataLoader ->
    dataset -> sampler, aspect-ratio grouping and map wrappers included)."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, kind):
            found.append(obj)
            continue
        children: list[Any] = []
        if isinstance(obj, (list, tuple)) and depth == 0 or isinstance(obj, dict) and depth == 0:
            children = list(obj.values()) if isinstance(obj, dict) else list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.Tensor, np.ndarray, type)):
            children = [v for v in vars(obj).values() if hasattr(v, "__dict__") and not isinstance(v, type)]
        stack.extend((child, depth + 1) for child in children)
    return found


class ResumeState(Callback):
    """What an exact resume needs beyond Lightning's own state (step, optimizer, LR schedule), saved in every
    Lightning checkpoint: per rank, the number of training images consumed and the python / numpy / torch RNG
    states; plus ``last.ckpt`` brought up to date when training ends.

    On resume the training sampler (``TrainingSampler``, ``RepeatFactorTrainingSampler``,
    ``RandomSubsetTrainingSampler``) skips the consumed images, and the RNG states come back before the first
    resumed step, unless the sampler reseeded this process while mapping the batch (``num_workers=0``: the state
    then already follows the data position, as in the uninterrupted run). Evaluation during training gives the RNG
    states back as it found them, so it never shifts the training stream.

    Bit-exact when a batch is ``per-rank batch size`` consecutive indices of the sampler stream: always without
    ``dataloader.aspect_ratio_grouping``, and with it when ``num_workers=0`` and all images fall in one aspect
    group. With grouping and workers or mixed aspect ratios, the resumed run reads the right stream position but
    the grouping buffers start empty, so the batches can differ from the uninterrupted run's.
    """

    def __init__(self, save_last_on_train_end: bool = True) -> None:
        self.save_last_on_train_end = save_last_on_train_end
        self._consumed = 0
        self._pending: dict[str, Any] | None = None
        self._reseeds_at_load = 0
        self._restore_rng_at_step: int | None = None
        self._eval_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        # every rank calls this while a checkpoint is dumped (rank 0 writes it): gather all ranks' states
        local = {"consumed": self._consumed, "rng": _rng_states()}
        return {"ranks": comm.all_gather(local)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from ..data import samplers

        ranks = state_dict.get("ranks") or []
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(ranks) != world:
            logger.warning("ResumeState: the checkpoint holds the state of %d ranks but %d run now: the data "
                           "position and RNG states are not restored", len(ranks), world)
            return
        self._pending = ranks[rank]
        self._consumed = int(self._pending["consumed"])
        # Lightning cannot see that the sampler resumes and would warn that the data restarts
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # the training loader is built after this (Fit loop setup): its sampler picks the start up
        samplers.set_pending_start(self._consumed)
        self._reseeds_at_load = samplers.main_process_reseeds()

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from ..data import samplers

        if self._pending is None:
            return
        samplers.set_pending_start(None)  # consumed by the loader's sampler, or nothing to consume it
        found = _find_in_loader(trainer.train_dataloader, samplers._InfiniteSampler)
        if not found:
            logger.warning("ResumeState: no TrainingSampler-like sampler in the training loader: the data stream "
                           "restarts from its beginning instead of after the %d images consumed", self._consumed)
        for sampler in found:
            if sampler.state_dict()["start"] != self._consumed:  # built before the restore: position it now
                sampler.load_state_dict({"start": self._consumed})
        logger.info("Resuming the data stream after %d images (this rank)", self._consumed)
        from ..data.common import AspectRatioGroupedDataset

        if found and _find_in_loader(trainer.train_dataloader, AspectRatioGroupedDataset):
            logger.info("Resuming with aspect-ratio grouping: the grouping buffers start empty, so the batches equal "
                        "the uninterrupted run's only if all images share one aspect group and num_workers is 0 "
                        "(or divides the number of batches done)")
        self._restore_rng_at_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        from ..data import samplers

        if self._pending is not None and self._restore_rng_at_step == trainer.global_step:
            if samplers.main_process_reseeds() == self._reseeds_at_load:
                _set_rng_states(self._pending["rng"])
            self._pending, self._restore_rng_at_step = None, None
        self._consumed += len(batch) if isinstance(batch, (list, tuple)) else 1

    # Evaluation during fit must not shift the training RNG stream (its loaders draw worker seeds before any
    # validation hook runs): the state after each training batch comes back when the evaluation ends.
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_rng = _rng_states()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._eval_rng = _rng_states()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and self._eval_rng is not None:
            _set_rng_states(self._eval_rng)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.save_last_on_train_end:
            return
        from lightning.pytorch.callbacks import ModelCheckpoint

        for cb in trainer.checkpoint_callbacks:
            # Lightning writes last.ckpt only with a periodic save; make it match model_final at the end
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb._last_global_step_saved != trainer.global_step:
                cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
