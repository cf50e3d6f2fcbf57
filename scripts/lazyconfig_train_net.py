#!/usr/bin/env python
"""Train or evaluate a LazyConfig (``.py``) model, with detectron2's ``tools/lazyconfig_train_net.py`` command line,
on Lightning (:mod:`detlightning.engine.lazy`).

    python scripts/lazyconfig_train_net.py --config-file new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py
    python scripts/lazyconfig_train_net.py --config-file my_cfg.py train.max_iter=5 model.roi_heads.num_classes=3
    python scripts/lazyconfig_train_net.py --config-file my_cfg.py --eval-only train.init_checkpoint=model_final.pth
    python scripts/lazyconfig_train_net.py --config-file my_cfg.py --num-gpus 8 --resume

``--config-file`` also takes a model-zoo name (``new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ.py``,
``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py``). Trailing ``key=value`` pairs are Hydra-syntax
overrides of the lazy config (``+key=value`` adds a key). ``train.amp.enabled=true`` trains in mixed precision
(fp16 on CUDA, bf16 on the CPU); ``train.ddp.*`` configure DistributedDataParallel when ``--num-gpus`` > 1.
"""
from __future__ import annotations

import logging
from typing import Any

from detlightning.cli import load_lazy_config
from detlightning.engine import default_argument_parser, default_setup, launch, lazy_evaluate, lazy_train
from detlightning.utils import comm

logger = logging.getLogger("detlightning")


def main(args: Any) -> dict[str, Any]:
    cfg = load_lazy_config(args.config_file, args.opts or [])
    default_setup(cfg, args)
    if args.eval_only:
        return lazy_evaluate(cfg)
    return lazy_train(cfg, resume=args.resume)


def invoke_main() -> None:
    args = default_argument_parser(
        epilog="Example: lazyconfig_train_net.py --config-file cfg.py train.max_iter=100 optimizer.lr=0.01"
    ).parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    if comm.is_main_process():
        logger.info("Done.")


if __name__ == "__main__":
    invoke_main()
