#!/usr/bin/env python
"""Train (or, with ``eval_only=true``, evaluate) a detection model; Hydra composes the config.

    python scripts/train.py experiment=shapes_quick                 # built-in shapes dataset, CPU, minutes
    python scripts/train.py model=mask_rcnn solver.max_iter=2000 trainer=gpu
    python scripts/train.py resume=true hydra.run.dir=outputs/<date>/<time>   # continue a run
    python scripts/train.py eval_only=true model.weights=outputs/.../checkpoints/model_final.pth
    python scripts/train.py -m solver.base_lr=0.01,0.02              # a sweep: one job per value, multirun/...
    python scripts/train.py d2_config=configs/my_detectron2.yaml     # a detectron2 yaml (with _BASE_)
    python scripts/train.py lazy_config=new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py \
        +lazy.train.max_iter=100 +lazy.dataloader.train.total_batch_size=4       # a LazyConfig (.py)

Outputs (``paths.output_dir``, the Hydra run dir by default): checkpoints/ (``model_XXXXXXX.pth``,
``model_final.pth``, Lightning ``.ckpt``, ``last.ckpt``), metrics.json, tensorboard/, inference/, config.yaml.
"""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from detlightning.cli import load_lazy_config, setup_cfg
from detlightning.engine import evaluate, prepare_cfg, primary_metric, train


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train or evaluate as ``cfg.eval_only`` says; returns the final evaluation results."""
    if cfg.get("lazy_config"):
        return run_lazy(cfg)
    # d2_config=<detectron2 yaml> decides model/input/data/solver/test; command-line keys keep their values
    cfg = setup_cfg(cfg)
    if cfg.eval_only:
        return evaluate(cfg)
    return train(cfg)


def run_lazy(cfg: DictConfig) -> dict[str, Any]:
    """``lazy_config=<file or zoo name>``: the LazyConfig decides everything; it runs in this run's output dir."""
    from detlightning.engine import default_setup, lazy_evaluate, lazy_train

    output_dir = prepare_cfg(cfg).paths.output_dir
    lazy = load_lazy_config(cfg.lazy_config, list(cfg.lazy_overrides or []), output_dir=output_dir,
                            updates=cfg.get("lazy") or {})
    default_setup(lazy)
    return lazy_evaluate(lazy) if cfg.eval_only else lazy_train(lazy, resume=bool(cfg.resume))


@hydra.main(config_path="pkg://detlightning.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    # the return value is what Hydra sweepers optimise: the box AP of the first dataset, when there is one
    return primary_metric(results)


if __name__ == "__main__":
    main()
