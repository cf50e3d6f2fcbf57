"""The checkpoint file forms DetectionCheckpointer reads: .pth, model-zoo .pkl, Lightning .ckpt, pycls .pyth."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer, state_dict_from_lightning_ckpt

from .toy_models import ToyDetector

LOGGER = "detlightning.checkpoint"


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_bare_state_dict_pth(tmp_path):
    src, dst = ToyDetector(seed=1), ToyDetector(seed=2)
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    assert DetectionCheckpointer(dst).load(str(tmp_path / "bare.pth")) == {}
    _assert_same_state(src, dst)


def test_numpy_arrays_in_pth_become_tensors(tmp_path):
    src, dst = ToyDetector(seed=1), ToyDetector(seed=2)
    torch.save({"model": {k: v.numpy() for k, v in src.state_dict().items()}, "iteration": 3}, tmp_path / "np.pth")
    assert DetectionCheckpointer(dst).load(str(tmp_path / "np.pth")) == {"iteration": 3}
    _assert_same_state(src, dst)


def test_model_zoo_pkl(tmp_path, caplog):
    src, dst = ToyDetector(seed=1), ToyDetector(seed=2)
    path = tmp_path / "model_final_abc.pkl"
    with open(path, "wb") as f:
        arrays = {k: v.numpy() for k, v in src.state_dict().items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        extra = DetectionCheckpointer(dst).load(str(path))
    _assert_same_state(src, dst)
    assert extra == {"__author__": "Detectron2 Model Zoo"}
    assert "Detectron2 Model Zoo" in caplog.text


def test_model_zoo_pkl_with_matching_heuristics_aligns_suffixes(tmp_path, caplog):
    """Backbone-only names land in the full model: stem.conv1.weight -> backbone.bottom_up.stem.conv1.weight."""
    src, dst = ToyDetector(seed=1), ToyDetector(seed=2)
    prefix = "backbone.bottom_up."
    sub = {k[len(prefix):]: v.numpy() for k, v in src.state_dict().items() if k.startswith(prefix)}
    assert "stem.conv1.weight" in sub
    path = tmp_path / "backbone.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sub, "__author__": "someone", "matching_heuristics": True}, f)
    ckpt = DetectionCheckpointer(dst)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ckpt.load(str(path))
    s, d = src.state_dict(), dst.state_dict()
    for k in s:
        if k.startswith(prefix):
            assert torch.equal(s[k], d[k]), k
    assert not torch.equal(s["roi_heads.box_predictor.cls_score.weight"], d["roi_heads.box_predictor.cls_score.weight"])
    assert sorted(ckpt.incompatible_keys.missing_keys) == sorted(k for k in s if not k.startswith(prefix))
    assert ckpt.incompatible_keys.unexpected_keys == []
    assert "Following weights matched with submodule backbone.bottom_up" in caplog.text


def test_pth_matching_heuristics_only_on_request(tmp_path):
    src = ToyDetector(seed=1)
    w = src.backbone.bottom_up.stem.conv1.weight.detach().clone()
    torch.save({"model": {"stem.conv1.weight": w}}, tmp_path / "sub.pth")

    plain = ToyDetector(seed=2)
    ckpt = DetectionCheckpointer(plain)
    with pytest.raises(ValueError, match=r"matches none of the model's 16 tensors.*1 unused keys like \['stem"):
        ckpt.load(str(tmp_path / "sub.pth"))  # without the heuristics no key matches
    assert not torch.equal(plain.backbone.bottom_up.stem.conv1.weight, w)

    heur = ToyDetector(seed=2)
    ckpt = DetectionCheckpointer(heur)
    ckpt.load(str(tmp_path / "sub.pth") + "?matching_heuristics=True")
    assert torch.equal(heur.backbone.bottom_up.stem.conv1.weight, w)
    assert ckpt.incompatible_keys.unexpected_keys == []
    with pytest.raises(ValueError, match="unsupported query"):
        ckpt.load(str(tmp_path / "sub.pth") + "?foo=1")


def test_lightning_ckpt_dict_strips_model_prefix(tmp_path):
    src, dst = ToyDetector(seed=1), ToyDetector(seed=2)
    sd = {"model." + k: v for k, v in src.state_dict().items()}
    sd["criterion.class_weight"] = torch.ones(3)  # another submodule of the LightningModule: ignored
    ckpt_dict = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": sd,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    torch.save(ckpt_dict, tmp_path / "epoch=3.ckpt")
    ckpt = DetectionCheckpointer(dst)
    extra = ckpt.load(str(tmp_path / "epoch=3.ckpt"))
    _assert_same_state(src, dst)
    assert ckpt.incompatible_keys.unexpected_keys == []
    assert extra["epoch"] == 3 and extra["global_step"] == 120 and "state_dict" not in extra

    got = state_dict_from_lightning_ckpt(ckpt_dict)
    assert set(got) == set(src.state_dict())
    assert set(state_dict_from_lightning_ckpt(ckpt_dict, prefix="criterion")) == {"class_weight"}
    # a LightningModule that *is* the model: nothing to strip
    assert state_dict_from_lightning_ckpt({"state_dict": {"a.weight": 1}}) == {"a.weight": 1}
    with pytest.raises(KeyError, match="state_dict"):
        state_dict_from_lightning_ckpt({"model": {}})


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # Lightning-internal deprecation, not ours
def test_real_lightning_checkpoint(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": 0.1})
            self.model = ToyDetector(seed=1)

        def training_step(self, batch, batch_idx):
            return self.model.roi_heads.box_predictor.cls_score(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8)), batch_size=2)
    module = Module()
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    dst = ToyDetector(seed=2)
    ckpt = DetectionCheckpointer(dst)
    extra = ckpt.load(str(tmp_path / "last.ckpt"))  # safe (weights_only) load works for Lightning files
    _assert_same_state(module.model, dst)
    assert ckpt.incompatible_keys.missing_keys == [] and ckpt.incompatible_keys.unexpected_keys == []
    assert extra["global_step"] == 1


def test_pycls_pyth(tmp_path):
    src = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    dst = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        src[1].running_mean.fill_(0.5)
    torch.save({"model_state": src.state_dict(), "epoch": 7}, tmp_path / "m.pyth")
    ckpt = DetectionCheckpointer(dst)
    extra = ckpt.load(str(tmp_path / "m.pyth"))
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[1].running_mean, torch.full((2,), 0.5))
    # num_batches_tracked is dropped from pycls files; BatchNorm2d fills it in itself
    assert ckpt.incompatible_keys.missing_keys == [] and ckpt.incompatible_keys.unexpected_keys == []
    assert extra["__author__"] == "pycls"


def test_numpy_scalar_and_unsupported_values_in_state_dict(tmp_path, caplog):
    model = torch.nn.Linear(2, 1)
    path = tmp_path / "odd.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"model": {"weight": np.array([[1.0, 2.0]], np.float32), "bias": np.float32(3.0), "name": "x"},
             "__author__": "test"},
            f,
        )
    # bias is a 0-d array in the file while the model has shape (1,): reported, never a crash
    with caplog.at_level(logging.INFO, logger=LOGGER):
        DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), torch.tensor([[1.0, 2.0]]))
    assert "unsupported type" in caplog.text and "'name'" in caplog.text
    assert "incompatible shapes" in caplog.text
