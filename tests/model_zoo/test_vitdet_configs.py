"""ViTDet's COCO LazyConfigs (ViT-B/L/H Mask and Cascade Mask R-CNN, MViTv2-B/L/H Cascade Mask R-CNN): each loads
by its detectron2 name, carries detectron2's backbone sizes and schedule, and builds its model (on the meta device:
no memory or init time for the 300-700M-parameter variants)."""
from __future__ import annotations

import pytest
import torch

from detlightning import model_zoo
from detlightning.config import instantiate
from detlightning.modeling import MViT, SimpleFeaturePyramid, ViT

# name -> (backbone width, depth, heads, global blocks (ViT) / last block of each stage (MViT), max_iter)
VIT = {
    "mask_rcnn_vitdet_b_100ep": (768, 12, 12, [2, 5, 8, 11], 184375),
    "mask_rcnn_vitdet_l_100ep": (1024, 24, 16, [5, 11, 17, 23], 184375),
    "mask_rcnn_vitdet_h_75ep": (1280, 32, 16, [7, 15, 23, 31], 184375 * 3 // 4),
    "cascade_mask_rcnn_vitdet_b_100ep": (768, 12, 12, [2, 5, 8, 11], 184375),
    "cascade_mask_rcnn_vitdet_l_100ep": (1024, 24, 16, [5, 11, 17, 23], 184375),
    "cascade_mask_rcnn_vitdet_h_75ep": (1280, 32, 16, [7, 15, 23, 31], 184375 * 3 // 4),
}
MVIT = {
    "cascade_mask_rcnn_mvitv2_b_in21k_100ep": (96, 24, 1, (1, 4, 20, 23), 184375),
    "cascade_mask_rcnn_mvitv2_l_in21k_50ep": (144, 48, 2, (1, 7, 43, 47), 184375 // 2),
    "cascade_mask_rcnn_mvitv2_h_in21k_36ep": (192, 80, 3, (3, 11, 71, 79), 67500),
}


def _meta_model(cfg):
    with torch.device("meta"):
        return instantiate(cfg.model)


@pytest.mark.parametrize("name", sorted(VIT))
def test_vitdet_config(name):
    width, depth, heads, global_blocks, max_iter = VIT[name]
    cfg = model_zoo.get_config(f"ViTDet/COCO/{name}.py")
    # detectron2's own path to the file resolves to the same config
    assert model_zoo.get_config(f"projects/ViTDet/configs/COCO/{name}.py").model.backbone.net.depth == depth
    assert cfg.train.max_iter == max_iter and cfg.lr_multiplier.scheduler.num_updates == max_iter
    assert cfg.dataloader.train.total_batch_size == 64
    model = _meta_model(cfg)
    assert model.input_format == "RGB"
    assert isinstance(model.backbone, SimpleFeaturePyramid) and isinstance(model.backbone.net, ViT)
    assert model.backbone.padding_constraints["square_size"] == 1024
    blocks = model.backbone.net.blocks
    assert len(blocks) == depth and blocks[0].attn.num_heads == heads
    assert blocks[0].norm1.normalized_shape == (width,) and blocks[0].norm1.eps == 1e-6
    assert [i for i, b in enumerate(blocks) if b.window_size == 0] == global_blocks
    assert {b.window_size for b in blocks if b.window_size} == {14}
    assert blocks[0].attn.rel_pos_h.shape == (27, width // heads)  # 14x14 windows
    assert blocks[global_blocks[0]].attn.rel_pos_h.shape == (127, width // heads)  # 64x64 tokens
    if name.startswith("cascade"):
        assert type(model.roi_heads).__name__ == "CascadeROIHeads" and len(model.roi_heads.box_predictor) == 3
    else:
        assert type(model.roi_heads).__name__ == "StandardROIHeads"
    lr_factor = cfg.optimizer.params.lr_factor_func
    decay = lr_factor.keywords["lr_decay_rate"]
    assert lr_factor("backbone.net.blocks.0.attn.qkv.weight") == pytest.approx(decay**depth)
    assert lr_factor("roi_heads.box_head.fc1.weight") == 1.0


@pytest.mark.parametrize("name", sorted(MVIT))
def test_mvitv2_config(name):
    width, depth, heads, last_blocks, max_iter = MVIT[name]
    cfg = model_zoo.get_config(f"ViTDet/COCO/{name}.py")
    assert cfg.train.max_iter == max_iter
    assert instantiate(cfg.lr_multiplier.scheduler).num_updates == max_iter
    model = _meta_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, MViT) and len(bottom_up.blocks) == depth
    assert bottom_up._last_block_indexes == last_blocks
    assert bottom_up.blocks[0].attn.num_heads == heads
    channels = {k: v.channels for k, v in bottom_up.output_shape().items()}
    assert channels == {"scale2": width, "scale3": 2 * width, "scale4": 4 * width, "scale5": 8 * width}
    assert model.backbone.padding_constraints == {"square_size": 1024}
    assert model.backbone.fpn_lateral2.norm.__class__.__name__ == "LayerNorm"
    assert len(model.roi_heads.box_predictor) == 3
    assert cfg.optimizer.lr == (1.6e-4 if "_h_" in name else 8e-5)


def test_mvitv2_h_uses_activation_checkpointing_and_its_own_schedule():
    cfg = model_zoo.get_config("ViTDet/COCO/cascade_mask_rcnn_mvitv2_h_in21k_36ep.py")
    assert cfg.model.backbone.bottom_up.use_act_checkpoint is True
    sched = instantiate(cfg.lr_multiplier.scheduler)
    assert [sched(x / 67500) for x in (0, 52499, 52500, 62500, 67499)] == [1.0, 1.0, 0.1, 0.01, 0.01]
