# ViTDet's Mask R-CNN: a plain ViT-B/16 (MAE pre-training, windowed attention with four global blocks) under a
# simple feature pyramid, RGB input padded to a 1024 square, LayerNorm in the pyramid and the conv heads.
from functools import partial

from torch import nn

from detlightning.config import LazyCall as L
from detlightning.modeling import SimpleFeaturePyramid, ViT
from detlightning.modeling.backbone.fpn import LastLevelMaxPool

from ..data.constants import constants
from .mask_rcnn_fpn import model

model.input_format = "RGB"
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std

# ViT-B: width 768, 12 blocks of 12 heads; blocks 2, 5, 8 and 11 attend globally, the others in 14x14 windows
embed_dim, depth, num_heads, dp = 768, 12, 12, 0.1
model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=1024,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=dp,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=[i for i in range(depth) if i % 3 != 2],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0, 0.5),  # strides 4 ... 32 from the stride-16 map, p6 by max pooling
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=1024,
)

model.proposal_generator.head.conv_dims = [-1, -1]  # two convs in the RPN head
model.roi_heads.box_head.update(conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN")  # 4conv1fc
model.roi_heads.mask_head.conv_norm = "LN"
