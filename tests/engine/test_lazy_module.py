"""LazyDetectionModule / build_lazy_trainer: the pieces a LazyConfig's ``optimizer``, ``lr_multiplier`` and ``train``
turn into (the end-to-end run is tests/scripts/test_lazyconfig_train_net.py)."""
from __future__ import annotations

import pytest

from detlightning import model_zoo
from detlightning.engine import LazyDetectionModule, build_lazy_trainer


def _small_vitdet_cfg(tmp_path):
    """ViTDet-B's config with a 3-block, 64-wide ViT (the recipe unchanged: AdamW, layer decay, pos_embed without
    weight decay, the 100-epoch multiplier)."""
    cfg = model_zoo.get_config("ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py")
    cfg.model.backbone.net.update(embed_dim=64, depth=3, num_heads=2, window_block_indexes=[0, 1], img_size=256)
    cfg.model.backbone.square_pad = 256
    cfg.optimizer.params.lr_factor_func.keywords["num_layers"] = 3
    cfg.train.output_dir = str(tmp_path)
    return cfg


def test_vitdet_optimizer_has_layer_decay_and_no_weight_decay_on_pos_embed(tmp_path):
    cfg = _small_vitdet_cfg(tmp_path)
    module = LazyDetectionModule(cfg)
    optimizer = module.build_optimizer(cfg, module.model)
    assert type(optimizer).__name__ == "AdamW"
    assert cfg.optimizer.params.get("model") is None  # the model is put into the config only while building
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(module.model.named_parameters())
    base_lr = cfg.optimizer.lr
    # layer id: embeddings 0, block i -> i + 1, everything after the ViT num_layers + 1; LR x 0.7^(num_layers+1-id)
    assert groups[id(named["backbone.net.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(base_lr * 0.7**3)
    assert groups[id(named["backbone.net.blocks.2.mlp.fc1.weight"])]["lr"] == pytest.approx(base_lr * 0.7)
    assert groups[id(named["backbone.net.patch_embed.proj.weight"])]["lr"] == pytest.approx(base_lr * 0.7**4)
    assert groups[id(named["roi_heads.box_predictor.cls_score.weight"])]["lr"] == pytest.approx(base_lr)
    assert groups[id(named["backbone.net.pos_embed"])]["weight_decay"] == 0.0
    assert groups[id(named["backbone.net.blocks.0.norm1.weight"])]["weight_decay"] == 0.0  # norms: 0
    assert groups[id(named["backbone.net.blocks.0.attn.qkv.weight"])]["weight_decay"] == pytest.approx(0.1)

    scheduler = module.build_lr_scheduler(cfg, optimizer)
    # warmup from 0.001x over 250 of 184375 iterations
    head = groups[id(named["roi_heads.box_predictor.cls_score.weight"])]
    assert head["lr"] == pytest.approx(base_lr * 0.001, rel=1e-3)
    for _ in range(250):
        optimizer.step()
        scheduler.step()
    assert head["lr"] == pytest.approx(base_lr)


def test_lazy_trainer_takes_its_settings_from_train(tmp_path):
    cfg = _small_vitdet_cfg(tmp_path)
    cfg.train.update(max_iter=7, eval_period=3, device="cpu")
    trainer = build_lazy_trainer(cfg)
    assert trainer.max_steps == 7 and trainer.val_check_interval == 3
    assert trainer.precision == "bf16-mixed"  # train.amp.enabled on the CPU
    cfg.train.amp.enabled = False
    assert build_lazy_trainer(cfg).precision == "32-true"
