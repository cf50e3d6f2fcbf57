#!/usr/bin/env python
"""Train (or, with ``eval_only=true``, evaluate) a detection model; Hydra composes the config.

    python scripts/train.py experiment=shapes_quick                 # built-in shapes dataset, CPU, minutes
    python scripts/train.py model=mask_rcnn solver.max_iter=2000 trainer=gpu
    python scripts/train.py resume=true hydra.run.dir=outputs/<date>/<time>   # continue a run
    python scripts/train.py eval_only=true model.weights=outputs/.../checkpoints/model_final.pth
    python scripts/train.py -m solver.base_lr=0.01,0.02              # a sweep: one job per value, multirun/...
    python scripts/train.py d2_config=configs/my_detectron2.yaml     # a detectron2 yaml (with _BASE_)

Outputs (``paths.output_dir``, the Hydra run dir by default): checkpoints/ (``model_XXXXXXX.pth``,
``model_final.pth``, Lightning ``.ckpt``, ``last.ckpt``), metrics.json, tensorboard/, inference/, config.yaml.
"""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from detlightning.cli import setup_cfg
from detlightning.engine import evaluate, primary_metric, train


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train or evaluate as ``cfg.eval_only`` says; returns the final evaluation results."""
    # d2_config=<detectron2 yaml> decides model/input/data/solver/test; command-line keys keep their values
    cfg = setup_cfg(cfg)
    if cfg.eval_only:
        return evaluate(cfg)
    return train(cfg)


@hydra.main(config_path="pkg://detlightning.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    # the return value is what Hydra sweepers optimise: the box AP of the first dataset, when there is one
    return primary_metric(results)


if __name__ == "__main__":
    main()
