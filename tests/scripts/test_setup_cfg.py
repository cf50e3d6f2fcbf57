"""Every script sets its config up the same way (detlightning.cli.setup_cfg): with ``d2_config=<detectron2 yaml>``
the file decides the model, but the keys given on the command line win over it (``model.weights`` above all: a
model run with random weights because the weights key was dropped is the failure this guards against)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.cli import setup_cfg
from detlightning.config import load_d2_config
from tests._scripts import load_script

D2_YAML = Path(__file__).resolve().parents[1] / "data" / "d2_configs" / "tiny_shapes_mask_rcnn.yaml"


@pytest.fixture(scope="module")
def d2_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A detectron2 yaml naming weights that do not exist, and real weights for its model elsewhere."""
    root = tmp_path_factory.mktemp("setup_cfg")
    child = root / "child.yaml"
    child.write_text(
        f'_BASE_: "{D2_YAML}"\nMODEL:\n  WEIGHTS: "{root / "from_yaml_missing.pth"}"\nSOLVER:\n  BASE_LR: 0.5\n'
    )
    from detlightning.modeling import build_model

    torch.manual_seed(0)
    model = build_model(load_d2_config(child))
    DetectionCheckpointer(model, save_dir=str(root)).save("given")
    weights = root / "given.pth"
    shapes = [f"datasets.shapes.root={root / 'shapes'}", "datasets.shapes.num_train=4", "datasets.shapes.num_val=2",
              "datasets.shapes.image_size=64"]
    overrides = [f"d2_config={child}", f"model.weights={weights}", "solver.base_lr=0.01", *shapes]
    return {"overrides": overrides, "weights": weights, "state": model.state_dict()}


def _check(cfg: Any, d2_setup: dict[str, Any]) -> None:
    assert cfg.model.weights == str(d2_setup["weights"])  # command line, not the file's MODEL.WEIGHTS
    assert cfg.solver.base_lr == 0.01  # command line, not the file's SOLVER.BASE_LR
    assert cfg.model.resnets.depth == 18 and cfg.model.fpn.out_channels == 32  # the rest is the file's
    assert cfg.solver.max_iter == 3


def _assert_loaded(model: torch.nn.Module, d2_setup: dict[str, Any]) -> None:
    state = model.state_dict()
    for key, value in d2_setup["state"].items():
        assert torch.equal(state[key].cpu(), value), f"{key} was not loaded from model.weights"


def test_setup_cfg_command_line_wins(d2_setup):
    _check(setup_cfg(d2_setup["overrides"]), d2_setup)


def test_demo_loads_the_command_line_weights(d2_setup):
    demo = load_script("demo")
    cfg = demo.setup_cfg(d2_setup["overrides"], 0.5)
    _check(cfg, d2_setup)
    from detlightning.engine import DefaultPredictor

    _assert_loaded(DefaultPredictor(cfg).model, d2_setup)


def test_export_loads_the_command_line_weights(d2_setup):
    export = load_script("export")
    cfg = export.setup_cfg(d2_setup["overrides"])
    _check(cfg, d2_setup)
    from detlightning.engine import DefaultPredictor

    _assert_loaded(DefaultPredictor(cfg).model, d2_setup)


def test_plain_train_net_command_line_wins(d2_setup, tmp_path):
    script = load_script("plain_train_net")
    _check(script.build_cfg([*d2_setup["overrides"], f"paths.output_dir={tmp_path}"]), d2_setup)


def test_visualize_data_command_line_wins(d2_setup, tmp_path, monkeypatch):
    script = load_script("visualize_data")
    seen: list[Any] = []

    def spy(overrides):
        cfg = setup_cfg(overrides)
        seen.append(cfg)
        return cfg

    monkeypatch.setattr(script, "setup_cfg", spy)
    script.main(["--num", "1", "--output", str(tmp_path), *d2_setup["overrides"]])
    _check(seen[0], d2_setup)


def _hydra_cfg(overrides: list[str]):
    """The config a ``@hydra.main`` script receives for ``overrides``, with its HydraConfig set."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_module(config_module="detlightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("script_name", ["train", "eval"])
def test_hydra_scripts_command_line_wins(d2_setup, monkeypatch, script_name):
    from hydra.core.hydra_config import HydraConfig

    script = load_script(script_name)
    seen: list[Any] = []
    job = "train" if script_name == "train" else "evaluate"
    monkeypatch.setattr(script, job, lambda cfg: seen.append(cfg) or {})
    cfg = _hydra_cfg(d2_setup["overrides"])
    try:
        if script_name == "train":
            script.run(cfg)
        else:
            script.main.__wrapped__(cfg)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    _check(seen[0], d2_setup)
