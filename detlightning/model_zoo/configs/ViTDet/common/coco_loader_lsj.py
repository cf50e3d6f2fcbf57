# ViTDet's COCO loaders: RGB images, large-scale jitter to 1024x1024 crops for training, 1024 (longest side) for
# testing, batch 64.
import detlightning.data.transforms as T
from detlightning import model_zoo
from detlightning.config import LazyCall as L

image_size = 1024

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.update(
    augmentations=[
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ],
    image_format="RGB",
    recompute_boxes=True,
)
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
