from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detlightning.engine.callbacks import BestCheckpointer, PreciseBN, _draw
from detlightning.structures import Boxes, Instances


class _FakeTrainer(SimpleNamespace):
    def save_checkpoint(self, path: str) -> None:
        self.saved.append(Path(path).name)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"ckpt")


def _trainer(metric: float | None, step: int, tmp_path: Path) -> _FakeTrainer:
    metrics = {} if metric is None else {"bbox/AP": torch.tensor(metric)}
    return _FakeTrainer(sanity_checking=False, state=SimpleNamespace(fn="fit"), callback_metrics=metrics,
                        global_step=step, saved=[], default_root_dir=str(tmp_path))


def test_best_checkpointer_saves_only_improvements(tmp_path: Path) -> None:
    module = SimpleNamespace(model=nn.Linear(2, 2), cfg=OmegaConf.create({"paths": {"output_dir": str(tmp_path)}}))
    cb = BestCheckpointer(val_metric="bbox/AP", mode="max")
    t = _trainer(10.0, 100, tmp_path)
    cb.on_validation_end(t, module)
    assert t.saved == ["model_best.ckpt"] and cb.best_metric == 10.0 and cb.best_iter == 100
    best = torch.load(tmp_path / "checkpoints" / "model_best.pth", weights_only=True)
    assert best["iteration"] == 99 and set(best["model"]) == {"weight", "bias"}
    t = _trainer(5.0, 200, tmp_path)
    cb.on_validation_end(t, module)
    assert t.saved == [] and cb.best_metric == 10.0
    t = _trainer(float("nan"), 300, tmp_path)
    cb.on_validation_end(t, module)
    assert t.saved == []
    t = _trainer(None, 400, tmp_path)  # metric missing: warn, no save
    cb.on_validation_end(t, module)
    assert t.saved == []
    t = _trainer(12.5, 500, tmp_path)
    cb.on_validation_end(t, module)
    assert t.saved == ["model_best.ckpt"] and cb.best_iter == 500
    restored = BestCheckpointer()
    restored.load_state_dict(cb.state_dict())
    assert restored.best_metric == 12.5


def test_best_checkpointer_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        BestCheckpointer(mode="up")


def test_draw_predictions_scales_boxes_and_converts_bgr() -> None:
    image = torch.zeros(3, 100, 200)
    image[0] = 255.0  # blue in BGR
    inst = Instances((50, 100))  # predictions at the original size: half the input tensor's
    inst.pred_boxes = Boxes(torch.tensor([[20.0, 20.0, 80.0, 45.0], [0.0, 0.0, 5.0, 5.0]]))
    inst.scores = torch.tensor([0.9, 0.1])
    inst.pred_classes = torch.tensor([1, 0])
    out = _draw({"image": image, "height": 50, "width": 100}, {"instances": inst}, None, "BGR", 0.5, 10)
    blue = torch.tensor([0, 0, 255], dtype=torch.uint8)
    assert out.shape == (3, 50, 100) and out.dtype == torch.uint8
    # RGB now: the background is pure blue in channel 2
    assert torch.equal(out[:, 49, 99], blue)
    # the kept box is outlined (its bottom edge at y=45 differs from the background), its middle untouched
    assert any(not torch.equal(out[:, y, 50], blue) for y in (44, 45, 46))
    assert torch.equal(out[:, 35, 50], blue)
    # the low-score box at the origin is not drawn
    assert torch.equal(out[:, 2, 2], blue)
    # small images are enlarged for TensorBoard
    big = _draw({"image": image, "height": 50, "width": 100}, {"instances": inst}, None, "BGR", 0.5, 10, min_side=200)
    assert big.shape == (3, 200, 400)


def test_draw_sem_seg_predictions() -> None:
    image = torch.zeros(3, 20, 20)
    logits = torch.zeros(2, 20, 20)
    logits[1, :, 10:] = 1.0  # class 1 on the right half
    out = _draw({"image": image}, {"sem_seg": logits}, None, "RGB", 0.5, 10)
    assert out.shape == (3, 20, 20)
    # each class region painted in its own colour over the black image
    assert out[:, 10, 2].sum() > 0 and out[:, 10, 17].sum() > 0
    assert not torch.equal(out[:, 10, 2], out[:, 10, 17])


class _BNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2, momentum=0.1)

    def forward(self, x):
        return self.bn(x)


def test_precise_bn_averages_batch_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 2, generator=gen) * 3 + 5 for _ in range(4)]
    model = _BNModel()
    dm = SimpleNamespace(build_train_loader=lambda: iter(batches))
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), datamodule=dm, global_step=7)
    model.eval()
    PreciseBN(enabled=True, num_iter=4).on_validation_start(trainer, SimpleNamespace(model=model))
    stacked = torch.stack(batches)  # (4, 8, 2)
    assert torch.allclose(model.bn.running_mean, stacked.mean(dim=1).mean(dim=0), atol=1e-5)
    assert torch.allclose(model.bn.running_var, stacked.var(dim=1, unbiased=True).mean(dim=0), atol=1e-4)
    assert model.bn.momentum == 0.1 and not model.training  # restored


def test_precise_bn_disabled_is_noop() -> None:
    model = _BNModel()
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), datamodule=None, global_step=0)
    PreciseBN(enabled=False).on_validation_start(trainer, SimpleNamespace(model=model))
    assert torch.equal(model.bn.running_mean, torch.zeros(2))
