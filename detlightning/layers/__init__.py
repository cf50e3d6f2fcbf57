"""Building blocks shared by the models: norms, conv wrappers, ROI ops, NMS, losses."""
from .aspp import ASPP
from .batch_norm import CycleBatchNormList, FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm, get_norm
from .blocks import CNNBlockBase, DepthwiseSeparableConv2d
from .deform_conv import DeformConv, ModulatedDeformConv
from .losses import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss, sigmoid_focal_loss_jit, smooth_l1_loss
from .mask_ops import paste_masks_in_image
from .memory_format import cpu_channels_last, nchw_for_pooling
from .nms import batched_nms, nms
from .roi_align import ROIAlign, ROIPool
from .shape_spec import ShapeSpec
from .wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    cross_entropy,
    empty_input_loss_func_wrapper,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
