#!/usr/bin/env python
"""Evaluate a checkpoint on ``datasets.test`` and print COCO metrics (detectron2's ``train_net.py --eval-only``).

    python scripts/eval.py model.weights=outputs/<date>/<time>/checkpoints/model_final.pth
    python scripts/eval.py experiment=shapes_quick model.weights=.../last.ckpt trainer=gpu
    python scripts/eval.py d2_config=mask_rcnn_R_50_FPN_3x.yaml model.weights=model_final_f10217.pkl

``model.weights`` accepts detectron2 ``.pth``/``.pkl`` files, model-zoo URLs and Lightning ``.ckpt`` files.
The config (model/backbone/data overrides) must describe the same architecture as the checkpoint.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from detlightning.cli import setup_cfg
from detlightning.engine import evaluate, primary_metric


@hydra.main(config_path="pkg://detlightning.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    results = evaluate(setup_cfg(cfg))  # with d2_config=: the detectron2 yaml, command-line keys win
    return primary_metric(results)


if __name__ == "__main__":
    main()
