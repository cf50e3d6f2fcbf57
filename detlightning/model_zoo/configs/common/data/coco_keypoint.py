# COCO person keypoints: the COCO loaders on the keypoint splits, with keypoints (not masks) in the targets.
from detlightning.data.detection_utils import create_keypoint_hflip_indices

from .coco import dataloader

dataloader.train.dataset.update(names="keypoints_coco_2017_train", min_keypoints=1)
dataloader.test.dataset.names = "keypoints_coco_2017_val"

dataloader.train.mapper.update(
    use_instance_mask=False,
    use_keypoint=True,
    # left/right keypoints swap under horizontal flip; the pairs come from the dataset's metadata
    keypoint_hflip_indices=create_keypoint_hflip_indices(dataloader.train.dataset.names),
)
