"""Random positive/negative subsampling of labelled anchors or proposals for loss computation."""
from __future__ import annotations

import torch

from ..layers import nonzero_tuple

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick up to ``num_samples`` random elements, at most ``int(positive_fraction * num_samples)`` of them positive;
    negatives fill the remaining slots as far as there are enough.

    Args:
        labels: (N,) int, -1 = ignore, ``bg_label`` = negative, any other value = positive.
        num_samples: total number of elements to return (fewer if not enough are available).
        positive_fraction: upper bound on the positive share.
        bg_label: the value of the background class.
    Returns:
        pos_idx, neg_idx: 1-D int64 indices into ``labels``, in random order.
    """
    positive = nonzero_tuple((labels != -1) & (labels != bg_label))[0]
    negative = nonzero_tuple(labels == bg_label)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    # d2-parity: two randperm calls (positives first) so a seeded run draws the same samples as detectron2.
    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
