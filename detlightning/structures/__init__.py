"""Data structures models exchange: boxes, per-image instances, padded image batches, masks and keypoints."""
from .boxes import (
    Boxes,
    BoxMode,
    matched_boxlist_iou,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)
from .image_list import ImageList
from .instances import Instances
from .keypoints import Keypoints, heatmaps_to_keypoints
from .masks import BitMasks, PolygonMasks, ROIMasks, polygons_to_bitmask, rasterize_polygons_within_box

__all__ = [
    "BitMasks",
    "BoxMode",
    "Boxes",
    "ImageList",
    "Instances",
    "Keypoints",
    "PolygonMasks",
    "ROIMasks",
    "heatmaps_to_keypoints",
    "matched_boxlist_iou",
    "matched_pairwise_iou",
    "pairwise_intersection",
    "pairwise_ioa",
    "pairwise_iou",
    "pairwise_point_box_distance",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
]
