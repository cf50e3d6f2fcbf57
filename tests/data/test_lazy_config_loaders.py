"""The data loaders of the model-zoo LazyConfigs produce what their models train on: large-scale jitter
(ResizeScale + FixedSizeCrop, boxes recomputed from the cropped masks) to 1024x1024, in the configs' channel order."""
from __future__ import annotations

import pytest
import torch

from detlightning import model_zoo
from detlightning.config import instantiate
from detlightning.data import DatasetCatalog
from detlightning.data.datasets.shapes import register_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    names = register_shapes("lsj_shapes", root=tmp_path_factory.mktemp("lsj"), num_train=4, num_val=2,
                            image_size=64, replace=True)
    yield
    for name in names:
        DatasetCatalog.remove(name)


@pytest.mark.parametrize(
    "config, padded, image_format",
    [
        ("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", True, "BGR"),  # FixedSizeCrop pads to the full square
        ("ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py", False, "RGB"),  # ViTDet crops without padding (the model pads)
    ],
)
def test_lsj_train_loader_yields_1024_crops_with_consistent_targets(shapes, config, padded, image_format):
    cfg = model_zoo.get_config(config)
    loader_cfg = cfg.dataloader.train
    loader_cfg.dataset.names = "lsj_shapes_train"
    loader_cfg.update(total_batch_size=2, num_workers=0)
    assert loader_cfg.mapper.image_format == image_format and loader_cfg.mapper.recompute_boxes
    torch.manual_seed(0)
    batch = next(iter(instantiate(loader_cfg)))
    assert len(batch) == 2
    for sample in batch:
        image, inst = sample["image"], sample["instances"]
        h, w = image.shape[-2:]
        assert (h, w) == (1024, 1024) if padded else (h <= 1024 and w <= 1024)
        assert inst.image_size == (h, w)
        assert inst.has("gt_masks") and len(inst.gt_masks) == len(inst)
        if len(inst):
            # boxes recomputed from the (cropped) masks: each box is its mask's bounding box
            boxes = inst.gt_boxes.tensor
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            from_masks = inst.gt_masks.get_bounding_boxes().tensor
            assert torch.allclose(boxes, from_masks)


def test_lsj_test_loader_resizes_as_the_config_says(shapes):
    cfg = model_zoo.get_config("ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py")
    cfg.dataloader.test.dataset.names = "lsj_shapes_val"
    cfg.dataloader.test.num_workers = 0
    sample = next(iter(instantiate(cfg.dataloader.test)))[0]
    assert max(sample["image"].shape[-2:]) == 1024  # longest side 1024 (short edge 1024, max 1024)
