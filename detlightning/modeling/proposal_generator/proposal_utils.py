"""Turning dense RPN predictions into per-image proposals, and adding ground truth to proposals for training."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from ...layers import batched_nms, cat
from ...structures import Boxes, Instances

__all__ = [
    "add_ground_truth_to_proposals",
    "add_ground_truth_to_proposals_single_image",
    "find_top_rpn_proposals",
]

logger = logging.getLogger(__name__)

# d2-parity: the ground-truth "proposal" gets the logit of P(object) = 1 - 1e-10, evaluated exactly as detectron2 does
# (so the float rounding of 1 - (1 - 1e-10) is the same too).
_GT_LOGIT_VALUE = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def _as_0d(v: int | torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(v)


def _image_size_tensor(image_sizes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(N, 2) float (height, width) per image; works for int sizes and for 0-dim tensors (tracing)."""
    if all(isinstance(s, (tuple, list)) and not isinstance(s[0], torch.Tensor) for s in image_sizes):
        return torch.tensor([[float(h), float(w)] for h, w in image_sizes], dtype=torch.float32, device=device)
    # traced sizes are tensors (or tuples of 0-dim tensors): torch.as_tensor would record them as constants
    rows = [s if isinstance(s, torch.Tensor) else torch.stack([_as_0d(v) for v in s]) for s in image_sizes]
    return torch.stack(rows).to(device=device, dtype=torch.float32)


def find_top_rpn_proposals(
    proposals: list[torch.Tensor],
    pred_objectness_logits: list[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Select the RPN proposals of every image: per level the ``pre_nms_topk`` best, clipped to the image, small or
    non-finite ones removed, NMS within each level, then the ``post_nms_topk`` best over all levels.

    Args:
        proposals: L tensors, level i of shape (N, Hi*Wi*A, 4) XYXY, the decoded boxes of every anchor.
        pred_objectness_logits: L tensors, level i of shape (N, Hi*Wi*A).
        image_sizes: N (height, width) sizes the boxes are clipped to.
        nms_thresh: IoU threshold of the per-level NMS.
        pre_nms_topk: how many proposals to keep per level (and image) before NMS.
        post_nms_topk: how many proposals to keep per image after NMS, over all levels together.
        min_box_size: proposals with a side <= this (input pixels, after clipping) are removed.
        training: in training a non-finite box or score is an error (the model has diverged); in inference such
            proposals are dropped.

    Returns:
        N ``Instances`` with ``proposal_boxes`` (Boxes, R_i <= post_nms_topk) and ``objectness_logits`` (R_i,),
        sorted by decreasing objectness.
    """
    if len(proposals) != len(pred_objectness_logits):
        raise ValueError(
            f"find_top_rpn_proposals: got {len(proposals)} proposal levels but {len(pred_objectness_logits)} "
            f"objectness levels"
        )
    num_images = len(image_sizes)
    device = proposals[0].device

    # 1. Per level, the top-k anchors of every image at once (one topk call per level for the whole batch).
    topk_scores = []  # per level (N, k_i)
    topk_proposals = []  # per level (N, k_i, 4)
    level_ids = []  # per level (k_i,)
    batch_idx = torch.arange(num_images, device=device)
    for level_id, (proposals_i, logits_i) in enumerate(zip(proposals, pred_objectness_logits)):
        hi_wi_a = logits_i.shape[1]
        if isinstance(hi_wi_a, torch.Tensor):  # a tensor while tracing
            num_proposals_i = torch.clamp(hi_wi_a, max=int(pre_nms_topk))
        elif isinstance(hi_wi_a, torch.SymInt):  # torch.export with a symbolic image size: stay symbolic
            num_proposals_i = torch.sym_min(hi_wi_a, int(pre_nms_topk))
        else:
            num_proposals_i = min(int(hi_wi_a), int(pre_nms_topk))
        topk_scores_i, topk_idx = logits_i.topk(num_proposals_i, dim=1)
        topk_proposals.append(proposals_i[batch_idx[:, None], topk_idx])
        topk_scores.append(topk_scores_i)
        level_ids.append(torch.full((num_proposals_i,), level_id, dtype=torch.int64, device=device))

    # 2. All levels side by side.
    scores = cat(topk_scores, dim=1)  # (N, K)
    boxes = cat(topk_proposals, dim=1)  # (N, K, 4)
    levels = cat(level_ids, dim=0)  # (K,)

    # 3. Validity, clipping and the size filter for the whole batch; NMS per image.
    valid = torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    if training and not bool(valid.all()):
        bad = (~valid).nonzero()[0].tolist()
        raise FloatingPointError(
            f"RPN predicted boxes or objectness logits contain Inf/NaN (first at image {bad[0]}, candidate "
            f"{bad[1]}): training has diverged. Lower the learning rate, add warmup or gradient clipping."
        )
    sizes = _image_size_tensor(image_sizes, device)  # (N, 2) as (h, w)
    max_xyxy = sizes[:, [1, 0, 1, 0]].unsqueeze(1)  # (N, 1, 4)
    # Clipping is exact in float32, so clamping the batch gives the same numbers as a per-image Boxes.clip().
    boxes = torch.minimum(boxes.clamp(min=0), max_xyxy)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    keep_mask = valid & (widths > min_box_size) & (heights > min_box_size)

    results: list[Instances] = []
    for n, image_size in enumerate(image_sizes):
        keep_n = keep_mask[n]
        boxes_n, scores_n, lvl_n = boxes[n][keep_n], scores[n][keep_n], levels[keep_n]
        keep = batched_nms(boxes_n, scores_n, lvl_n, nms_thresh)
        # d2-parity: post-NMS top-k is per image (Detectron1 took it over the whole training batch).
        keep = keep[:post_nms_topk]
        res = Instances(image_size)
        res.proposal_boxes = Boxes(boxes_n[keep])
        res.objectness_logits = scores_n[keep]
        results.append(res)
    return results


def add_ground_truth_to_proposals(
    gt: list[Instances] | list[Boxes], proposals: list[Instances]
) -> list[Instances]:
    """Append each image's ground-truth boxes to its proposals (with objectness logit ~ +23, i.e. P ~ 1).

    Args:
        gt: per image, ``Instances`` with ``gt_boxes`` or plain ``Boxes``.
        proposals: per image, ``Instances`` with ``proposal_boxes`` and ``objectness_logits``.

    Returns:
        per image, the proposals followed by the ground truth, with the fields of ``proposals``.
    """
    if gt is None:
        raise ValueError("add_ground_truth_to_proposals: gt must be a list of Instances or Boxes, got None")
    if len(proposals) != len(gt):
        raise ValueError(
            f"add_ground_truth_to_proposals: got {len(proposals)} images of proposals but {len(gt)} of ground "
            f"truth; they must have the same length"
        )
    if len(proposals) == 0:
        return proposals
    return [add_ground_truth_to_proposals_single_image(gt_i, p_i) for gt_i, p_i in zip(gt, proposals)]


def add_ground_truth_to_proposals_single_image(gt: Instances | Boxes, proposals: Instances) -> Instances:
    """``add_ground_truth_to_proposals`` for one image."""
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    if not gt.has("gt_boxes"):
        raise ValueError(
            f"add_ground_truth_to_proposals: ground truth has no 'gt_boxes'; fields: {list(gt.get_fields())}"
        )
    gt_boxes = gt.gt_boxes
    device = proposals.objectness_logits.device
    gt_logits = torch.full((len(gt_boxes),), _GT_LOGIT_VALUE, dtype=torch.float32, device=device)

    # Instances.cat needs every proposal field on the ground-truth side too.
    gt_proposal = Instances(proposals.image_size, **gt.get_fields())
    gt_proposal.proposal_boxes = gt_boxes
    gt_proposal.objectness_logits = gt_logits
    missing = [k for k in proposals.get_fields() if not gt_proposal.has(k)]
    if missing:
        raise ValueError(
            f"add_ground_truth_to_proposals: proposals have fields {missing} that the ground truth lacks; "
            f"ground-truth fields: {list(gt.get_fields())}"
        )
    # Instances.cat keeps the fields of its first element: extra ground-truth fields are dropped here.
    return Instances.cat([proposals, gt_proposal])
