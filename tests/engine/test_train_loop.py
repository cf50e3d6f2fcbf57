"""detectron2's plain training loop: HookBase / TrainerBase / SimpleTrainer / AMPTrainer and the hooks of
``detlightning.engine.hooks``, on a toy regression model (fast, exact) and once on a tiny Mask R-CNN."""
from __future__ import annotations

import json
import logging
import math
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.engine import hooks
from detlightning.engine.train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase
from detlightning.solver import MultiStepParamScheduler
from detlightning.utils.events import EventWriter, JSONWriter, get_event_storage

from .conftest import tiny_overrides


class ToyModel(nn.Module):
    """``batch = (x (N, 4), y (N,))`` -> ``{"loss_mse", "loss_l1"}``; ``nan_at``: loss_l1 is NaN at that
    iteration of the storage."""

    def __init__(self, nan_at: int | None = None, tensor_loss: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.tensor_loss = tensor_loss
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        x, y = batch
        pred = self.linear(self.bn(x)).squeeze(1)
        self.seen_dtypes.append(pred.dtype)
        err = pred.float() - y
        if self.tensor_loss:
            return err.pow(2).mean()
        l1 = err.abs().mean() * 0.1
        if self.nan_at is not None and get_event_storage().iter == self.nan_at:
            l1 = l1 * float("nan")
        return {"loss_mse": err.pow(2).mean(), "loss_l1": l1}


def fixed_batches(seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same (8, 4) batch forever: a resumed run then sees exactly the data of an uninterrupted one."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=gen) * 2 + 1
    y = x @ torch.tensor([0.5, -1.0, 2.0, 0.25]) + 0.3
    while True:
        yield x, y


def make_trainer(cls: type[SimpleTrainer] = SimpleTrainer, lr: float = 0.05, **kwargs: Any) -> SimpleTrainer:
    torch.manual_seed(0)
    model = kwargs.pop("model", None) or ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return cls(model, fixed_batches(), optimizer, **kwargs)


class Recorder(HookBase):
    """Records (event, trainer.iter, storage.iter) for every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def _log(self, event: str) -> None:
        self.events.append((event, self.trainer.iter, self.trainer.storage.iter))

    def before_train(self) -> None:
        self._log("before_train")

    def after_train(self) -> None:
        self._log("after_train")

    def before_step(self) -> None:
        self._log("before_step")

    def after_backward(self) -> None:
        self._log("after_backward")

    def after_step(self) -> None:
        self._log("after_step")


# ------------------------------------------------------------------------------------------ the loop itself
def test_hook_call_order_and_iterations() -> None:
    trainer = make_trainer()
    rec = Recorder()
    trainer.register_hooks([rec, None])
    assert isinstance(rec.trainer, weakref.ProxyType)
    trainer.train(2, 5)
    expected = [("before_train", 2, 2)]
    for i in (2, 3, 4):
        expected += [("before_step", i, i), ("after_backward", i, i), ("after_step", i, i)]
    expected.append(("after_train", 5, 5))  # a completed loop: iter == max_iter
    assert rec.events == expected
    assert (trainer.iter, trainer.start_iter, trainer.max_iter) == (5, 2, 5)


def test_register_hooks_rejects_non_hooks() -> None:
    with pytest.raises(TypeError, match="HookBase"):
        make_trainer().register_hooks([object()])  # type: ignore[list-item]


def test_trainer_base_needs_run_step() -> None:
    trainer = TrainerBase()
    rec = Recorder()
    trainer.register_hooks([rec])
    with pytest.raises(NotImplementedError, match="run_step"):
        trainer.train(0, 2)
    assert rec.events[-1] == ("after_train", 0, 0)


def test_losses_and_data_time_in_storage() -> None:
    trainer = make_trainer()
    trainer.train(0, 3)
    storage = trainer.storage
    for name in ("loss_mse", "loss_l1", "total_loss", "data_time", "rank_data_time"):
        assert [it for _, it in storage.history(name).values()] == [0, 1, 2], name
    for (mse, _), (l1, _), (total, _) in zip(
        storage.history("loss_mse").values(), storage.history("loss_l1").values(),
        storage.history("total_loss").values(),
    ):
        assert total == pytest.approx(mse + l1)
    # training lowers the loss
    assert storage.history("loss_mse").values()[-1][0] < storage.history("loss_mse").values()[0][0]


def test_tensor_loss_is_total_loss_only() -> None:
    trainer = make_trainer(model=ToyModel(tensor_loss=True))
    trainer.train(0, 2)
    names = set(trainer.storage.histories())
    assert "total_loss" in names and not names & {"loss_mse", "loss_l1"}


def test_gather_metric_period() -> None:
    trainer = make_trainer(gather_metric_period=2)
    trainer.train(0, 5)
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [1, 3]


def test_async_write_metrics() -> None:
    trainer = make_trainer(async_write_metrics=True)
    trainer.train(0, 3)
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [0, 1, 2]


def test_zero_grad_before_forward_trains_the_same() -> None:
    a, b = make_trainer(), make_trainer(zero_grad_before_forward=True)
    a.train(0, 3)
    b.train(0, 3)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_nan_loss_raises_naming_the_loss_and_after_train_runs() -> None:
    trainer = make_trainer(model=ToyModel(nan_at=1))
    rec = Recorder()
    trainer.register_hooks([rec])
    with pytest.raises(FloatingPointError, match=r"iteration=1: loss_l1 ") as info:
        trainer.train(0, 4)
    assert "loss_mse" in str(info.value)  # the whole loss dict is shown
    assert rec.events[-1] == ("after_train", 1, 1)  # a failed loop: iter is the failing iteration


def test_exception_is_logged_reraised_and_after_train_runs(caplog: pytest.LogCaptureFixture) -> None:
    def boom(trainer: Any) -> None:
        if trainer.iter == 2:
            raise RuntimeError("hook failed")

    trainer = make_trainer()
    rec = Recorder()
    trainer.register_hooks([hooks.CallbackHook(after_step=boom), rec])
    with caplog.at_level(logging.ERROR, logger="detlightning.engine.train_loop"), pytest.raises(
        RuntimeError, match="hook failed"
    ):
        trainer.train(0, 5)
    assert rec.events[-1] == ("after_train", 2, 2)
    assert "Exception during training" in caplog.text


def test_callback_hook_calls_functions_with_the_trainer() -> None:
    seen: list[tuple[str, int]] = []
    hook = hooks.CallbackHook(
        before_train=lambda t: seen.append(("before_train", t.iter)),
        before_step=lambda t: seen.append(("before_step", t.iter)),
        after_step=lambda t: seen.append(("after_step", t.iter)),
        after_train=lambda t: seen.append(("after_train", t.iter)),
    )
    trainer = make_trainer()
    trainer.register_hooks([hook])
    trainer.train(0, 2)
    assert seen == [("before_train", 0), ("before_step", 0), ("after_step", 0), ("before_step", 1),
                    ("after_step", 1), ("after_train", 2)]  # fmt: skip
    assert not hook._fns  # closures over the trainer are released


# ------------------------------------------------------------------------------------------ hooks
def test_lr_scheduler_steps_every_iteration_and_puts_lr() -> None:
    trainer = make_trainer(lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler)])
    trainer.train(0, 3)
    assert trainer.storage.history("lr").values() == [(0.1, 0), (0.05, 1), (0.025, 2)]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)
    assert trainer.storage.smoothing_hints()["lr"] is False


def test_lr_scheduler_wraps_a_param_scheduler_and_reads_the_trainer() -> None:
    trainer = make_trainer(lr=1.0)
    trainer.scheduler = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[2], num_updates=4)  # type: ignore[attr-defined]
    trainer.register_hooks([hooks.LRScheduler()])  # optimizer and scheduler from the trainer
    trainer.train(0, 4)
    assert [v for v, _ in trainer.storage.history("lr").values()] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_best_param_group_id() -> None:
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    many = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b, c], "lr": 2.0}], lr=1.0)
    assert hooks.LRScheduler.get_best_param_group_id(many) == 1
    single = torch.optim.SGD([{"params": [a], "lr": 3.0}, {"params": [b], "lr": 2.0}, {"params": [c], "lr": 2.0}],
                             lr=1.0)  # fmt: skip
    assert hooks.LRScheduler.get_best_param_group_id(single) == 1  # the most common LR


def test_iteration_timer(caplog: pytest.LogCaptureFixture) -> None:
    trainer = make_trainer()
    trainer.register_hooks([hooks.IterationTimer(warmup_iter=2)])
    with caplog.at_level(logging.INFO, logger="detlightning.engine.hooks"):
        trainer.train(0, 4)
    times = trainer.storage.history("time").values()
    assert [it for _, it in times] == [1, 2, 3] and all(t > 0 for t, _ in times)
    assert "Overall training speed: 3 iterations" in caplog.text and "Total training time" in caplog.text


def test_periodic_checkpointer_follows_detectron2_schedule(tmp_path: Path) -> None:
    trainer = make_trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=trainer.optimizer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=2)])
    trainer.train(0, 5)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth",
                                            "model_final.pth"]  # fmt: skip
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 4 and "optimizer" in final


def test_periodic_checkpointer_max_to_keep(tmp_path: Path) -> None:
    trainer = make_trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, 1, max_to_keep=2, file_prefix="toy")])
    trainer.train(0, 4)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == [
        "toy_0000002.pth", "toy_0000003.pth", "toy_final.pth"
    ]


class CountingWriter(EventWriter):
    def __init__(self) -> None:
        self.writes: list[int] = []
        self.closed = False

    def write(self) -> None:
        self.writes.append(get_event_storage().iter)

    def close(self) -> None:
        self.closed = True


def test_eval_hook_puts_flattened_metrics_and_periodic_writer_writes_them(tmp_path: Path) -> None:
    calls: list[int] = []

    def evaluate() -> dict[str, Any]:
        calls.append(trainer.iter)
        return {"bbox": {"AP": 10.0 + len(calls), "AP50": torch.tensor(50.0)}, "segm": {"AP": 5}}

    trainer = make_trainer()
    counting = CountingWriter()
    json_path = tmp_path / "metrics.json"
    trainer.register_hooks([
        hooks.EvalHook(2, evaluate),
        hooks.PeriodicWriter([JSONWriter(json_path), counting], period=2),
    ])  # fmt: skip
    trainer.train(0, 5)
    # every 2 iterations (after iterations 1 and 3) and once after training
    assert calls == [1, 3, 5]
    assert trainer.storage.history("bbox/AP").values() == [(11.0, 1), (12.0, 3), (13.0, 5)]
    assert trainer.storage.latest()["bbox/AP50"] == (50.0, 5) and trainer.storage.latest()["segm/AP"] == (5.0, 5)
    assert trainer.storage.smoothing_hints()["bbox/AP"] is False
    # writes after iterations 1 and 3, the last iteration 4, and after training (storage.iter == max_iter)
    assert counting.writes == [1, 3, 4, 5] and counting.closed
    lines = [json.loads(line) for line in json_path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 3, 4, 5]
    assert "total_loss" in lines[0] and lines[-1]["bbox/AP"] == 13.0 and "total_loss" not in lines[-1]


def test_eval_hook_last_iteration_evaluated_once_and_not_after_a_failure() -> None:
    calls: list[int] = []
    trainer = make_trainer()
    trainer.register_hooks([hooks.EvalHook(2, lambda: calls.append(trainer.iter) or {"m": 1.0})])
    trainer.train(0, 4)
    assert calls == [1, 4]

    calls.clear()
    failing = make_trainer(model=ToyModel(nan_at=1))
    failing.register_hooks([hooks.EvalHook(0, lambda: calls.append(failing.iter) or {"m": 1.0})])
    with pytest.raises(FloatingPointError):
        failing.train(0, 4)
    assert calls == []


def test_eval_hook_rejects_non_numbers() -> None:
    trainer = make_trainer()
    trainer.register_hooks([hooks.EvalHook(0, lambda: {"bbox": {"AP": "high"}})])
    with pytest.raises(ValueError, match="'bbox/AP' is 'high'"):
        trainer.train(0, 1)


def test_best_checkpointer_saves_on_improvement(tmp_path: Path) -> None:
    scores = iter([1.0, 3.0, 2.0])
    trainer = make_trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    best = hooks.BestCheckpointer(2, checkpointer, "bbox/AP", mode="max")
    trainer.register_hooks([hooks.EvalHook(2, lambda: {"bbox": {"AP": next(scores)}}), best])
    trainer.train(0, 6)  # evaluations after iterations 1, 3 and after training (6)
    assert (best.best_metric, best.best_iter) == (3.0, 3)
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 3
    assert trainer.state_dict()["hooks"]["BestCheckpointer"] == {"best_metric": 3.0, "best_iter": 3}
    with pytest.raises(ValueError, match="mode"):
        hooks.BestCheckpointer(2, checkpointer, "bbox/AP", mode="best")


def test_resumed_trainer_continues_where_it_stopped(tmp_path: Path) -> None:
    """An uninterrupted 6-iteration run vs. 3 iterations + resume from the checkpoint of iteration 2: same LRs,
    same final weights (model, optimizer momentum, LR scheduler and trainer state come back)."""

    def build(out: Path) -> tuple[SimpleTrainer, DetectionCheckpointer, Recorder]:
        trainer = make_trainer(lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2, gamma=0.5)
        checkpointer = DetectionCheckpointer(trainer.model, str(out), trainer=trainer)
        rec = Recorder()
        trainer.register_hooks([
            hooks.LRScheduler(scheduler=scheduler), hooks.PeriodicCheckpointer(checkpointer, 3), rec
        ])  # fmt: skip
        return trainer, checkpointer, rec

    full, _, _ = build(tmp_path / "full")
    full.train(0, 6)
    saved = torch.load(tmp_path / "full" / "model_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2 and saved["trainer"]["iteration"] == 2
    assert set(saved["trainer"]["hooks"]) == {"LRScheduler"}

    resumed, checkpointer, rec = build(tmp_path / "resumed")
    checkpointer.load(str(tmp_path / "full" / "model_0000002.pth"))
    assert resumed.iter == 2
    resumed.train(resumed.iter + 1, 6)
    assert [e[1] for e in rec.events if e[0] == "before_step"] == [3, 4, 5]
    assert resumed.start_iter == 3 and resumed.storage.history("lr").values() == full.storage.history("lr").values()[3:]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_load_state_dict_skips_unknown_hooks(caplog: pytest.LogCaptureFixture) -> None:
    trainer = make_trainer()
    state = {"iteration": 7, "hooks": {"NoSuchHook": {"x": 1}}, "optimizer": trainer.optimizer.state_dict()}
    with caplog.at_level(logging.WARNING, logger="detlightning.engine.train_loop"):
        trainer.load_state_dict(state)
    assert trainer.iter == 7 and "NoSuchHook" in caplog.text


def test_precise_bn_hook_sets_true_batch_statistics(caplog: pytest.LogCaptureFixture) -> None:
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=gen) * 3 + 5, torch.zeros(8)) for _ in range(6)]
    trainer = make_trainer()
    bn = trainer.model.bn
    trainer.register_hooks([hooks.PreciseBN(0, trainer.model, batches, num_iter=3)])
    trainer.train(0, 2)  # period 0: only after the last iteration
    xs = torch.stack([x for x, _ in batches[:3]])
    assert torch.allclose(bn.running_mean, xs.mean(dim=1).mean(dim=0), atol=1e-5)
    assert torch.allclose(bn.running_var, xs.var(dim=1, unbiased=True).mean(dim=0), atol=1e-4)
    assert bn.momentum == 0.1 and trainer.model.training

    frozen = ToyModel()
    frozen.bn.eval()  # a BN not in training mode is left alone
    with caplog.at_level(logging.INFO, logger="detlightning.engine.hooks"):
        hooks.PreciseBN(1, frozen, batches, 3)
    assert "PreciseBN is disabled" in caplog.text


def test_torch_profiler_writes_traces(tmp_path: Path) -> None:
    trainer = make_trainer()
    trainer.register_hooks([
        hooks.TorchProfiler(lambda t: t.iter == 1, str(tmp_path / "chrome"), save_tensorboard=False),
        hooks.TorchProfiler(lambda t: t.iter == 2, str(tmp_path / "tb")),
        hooks.AutogradProfiler(lambda t: t.iter == 0, str(tmp_path / "autograd")),
    ])  # fmt: skip
    trainer.train(0, 3)
    assert os.listdir(tmp_path / "chrome") == ["profiler-trace-iter1.json"]
    assert os.listdir(tmp_path / "tb" / "log" / "profiler-tensorboard-iter2")
    assert os.listdir(tmp_path / "autograd") == ["profiler-trace-iter0.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_torch_memory_stats_is_a_noop_without_cuda(caplog: pytest.LogCaptureFixture) -> None:
    trainer = make_trainer()
    trainer.register_hooks([hooks.TorchMemoryStats(period=1)])
    with caplog.at_level(logging.INFO, logger="detlightning.engine.hooks"):
        trainer.train(0, 2)
    assert not {"max_reserved_mem", "allocated_mem"} & set(trainer.storage.histories())
    assert "CUDA is not available" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_memory_stats_on_cuda() -> None:
    trainer = make_trainer(model=ToyModel().cuda())
    trainer.data_loader = ((x.cuda(), y.cuda()) for x, y in fixed_batches())
    trainer.register_hooks([hooks.TorchMemoryStats(period=2, max_runs=1)])
    trainer.train(0, 4)
    assert [it for _, it in trainer.storage.history("max_allocated_mem").values()] == [1]


# ------------------------------------------------------------------------------------------ AMP
def test_amp_trainer_bfloat16_on_cpu() -> None:
    trainer = make_trainer(AMPTrainer, precision=torch.bfloat16)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train(0, 2)
    assert trainer.model.seen_dtypes == [torch.bfloat16, torch.bfloat16]  # autocast was on
    assert not trainer.grad_scaler.is_enabled()  # bfloat16 needs no loss scaling
    assert all(math.isfinite(v) for v, _ in trainer.storage.history("total_loss").values())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert "grad_scaler" in trainer.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 autocast with a GradScaler is a CUDA setup")
def test_amp_trainer_float16_on_cuda() -> None:
    model = ToyModel().cuda()
    trainer = make_trainer(AMPTrainer, model=model, log_grad_scaler=True)
    trainer.data_loader = ((x.cuda(), y.cuda()) for x, y in fixed_batches())
    trainer.train(0, 2)
    assert model.seen_dtypes == [torch.float16, torch.float16] and trainer.grad_scaler.is_enabled()
    assert "[metric]grad_scaler" in trainer.storage.histories()


def test_amp_trainer_rejects_other_precisions() -> None:
    with pytest.raises(ValueError, match="precision"):
        make_trainer(AMPTrainer, precision=torch.float32)


# ------------------------------------------------------------------------------------------ a real model
def test_simple_trainer_on_tiny_mask_rcnn(shapes_root: Path, tmp_path: Path) -> None:
    from detlightning.config import compose
    from detlightning.data import build_detection_train_loader
    from detlightning.data.datasets.shapes import register_shapes_from_cfg
    from detlightning.modeling import build_model
    from detlightning.solver import build_lr_scheduler, build_optimizer

    cfg = compose(tiny_overrides(shapes_root) + [f"paths.output_dir={tmp_path}"])
    register_shapes_from_cfg(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=build_lr_scheduler(cfg, optimizer)),
        hooks.PeriodicWriter([JSONWriter(tmp_path / "metrics.json")], period=1),
    ])  # fmt: skip
    trainer.train(0, 3)
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1, 2]
    for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "lr", "data_time",
                "fast_rcnn/cls_accuracy"):  # the last one is put by the model into the trainer's storage
        assert key in lines[-1], key
    assert lines[0]["lr"] < lines[1]["lr"]  # warmup


# ------------------------------------------------------------------------------------------ two processes
def _write_metrics_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from detlightning.utils.events import EventStorage

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result: dict[str, Any] = {}
        with EventStorage(0) as storage:
            losses = {"loss_a": torch.tensor(1.0 + rank), "loss_b": torch.tensor(10.0 * rank)}
            SimpleTrainer.write_metrics(losses, 0.1 * (rank + 1), cur_iter=0)
            result["latest"] = {k: v for k, (v, _) in storage.latest().items()}
            # a NaN on rank 1 only: both ranks stop
            bad = {"loss_a": torch.tensor(float("nan") if rank == 1 else 1.0), "loss_b": torch.tensor(0.0)}
            try:
                SimpleTrainer.write_metrics(bad, 0.1, cur_iter=1)
            except FloatingPointError as e:
                result["error"] = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_write_metrics_averages_over_processes(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_write_metrics_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        latest = result["latest"]
        assert latest["loss_a"] == pytest.approx(1.5) and latest["loss_b"] == pytest.approx(5.0)
        assert latest["total_loss"] == pytest.approx(6.5)
        assert latest["data_time"] == pytest.approx(0.2)  # the slowest process
        assert latest["rank_data_time"] == pytest.approx(0.1 * (rank + 1))
        assert "iteration=1: loss_a" in result["error"]


def test_subclassing_simple_trainer_run_step() -> None:
    """detectron2's documented customisation: subclass SimpleTrainer and write run_step around the parent's."""

    class TwoLossTrainer(SimpleTrainer):
        def run_step(self) -> None:
            super().run_step()
            # a quantity the project computes itself, logged through the same storage
            weight_norm = float(sum(p.detach().norm() for p in self.model.parameters()))
            self.storage.put_scalar("weight_norm", weight_norm)

    trainer = make_trainer(TwoLossTrainer)
    trainer.train(0, 4)
    history = trainer.storage.history("weight_norm")
    assert [it for _, it in history.values()] == [0, 1, 2, 3]
    assert trainer.storage.history("total_loss").latest() < trainer.storage.history("total_loss").values()[0][0]
