"""Matcher: assign each prediction (anchor / proposal) to its best ground truth and label it by quality bands."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Matcher"]


class Matcher:
    """Give each of N predictions at most one of M ground-truth elements, and a label per prediction.

    ``thresholds`` split the best match quality into bands and ``labels`` names each band: with thresholds
    ``[0.3, 0.7]`` and labels ``[0, -1, 1]``, a prediction whose best IoU is < 0.3 is negative (0), in [0.3, 0.7) is
    ignored (-1) and >= 0.7 is positive (1).
    """

    def __init__(
        self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool = False
    ) -> None:
        """
        Args:
            thresholds: increasing band boundaries, all > 0.
            labels: one label in {-1, 0, 1} per band, i.e. ``len(thresholds) + 1`` of them.
            allow_low_quality_matches: also mark as positive, for every ground truth, the predictions that overlap
                it most (ties included) even if below the top threshold (Faster R-CNN RPN rule (i)).
        """
        thresholds = [float(t) for t in thresholds]
        labels = [int(label) for label in labels]
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"Matcher thresholds must be non-empty and positive, got {thresholds}")
        thresholds = [-float("inf"), *thresholds, float("inf")]
        if any(low > high for low, high in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be non-decreasing, got {thresholds[1:-1]}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher labels must each be -1 (ignore), 0 (negative) or 1 (positive), got {labels}")
        if len(labels) != len(thresholds) - 1:
            raise ValueError(
                f"Matcher needs len(thresholds) + 1 = {len(thresholds) - 1} labels, got {len(labels)}: {labels}"
            )
        self.thresholds = thresholds
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Match.

        Args:
            match_quality_matrix: (M, N) float, quality (e.g. IoU >= 0) of each (ground truth, prediction) pair.
        Returns:
            matches: (N,) int64, index in [0, M) of the best ground truth of each prediction (0 when M == 0).
            match_labels: (N,) int8, the label of each prediction's band.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"match_quality_matrix must be (M, N), got shape {tuple(match_quality_matrix.shape)}")
        num_preds = match_quality_matrix.size(1)
        if match_quality_matrix.numel() == 0:
            # No ground truth (or no prediction): quality is 0 everywhere, i.e. the lowest band (usually background).
            matches = match_quality_matrix.new_full((num_preds,), 0, dtype=torch.int64)
            match_labels = match_quality_matrix.new_full((num_preds,), self.labels[0], dtype=torch.int8)
            return matches, match_labels

        if not bool((match_quality_matrix >= 0).all()):
            raise ValueError("match_quality_matrix must be non-negative (e.g. IoU)")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_full(matches.size(), 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(matched_vals >= low) & (matched_vals < high)] = label

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    def set_low_quality_matches_(self, match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        """Mark positive (in place) every prediction that is the best (ties included) for some ground truth.

        Only the label changes: ``matches`` still names the prediction's own best ground truth.
        """
        highest_quality_foreach_gt = match_quality_matrix.max(dim=1).values
        # d2-parity: a ground truth whose best quality is 0 makes every prediction with quality 0 "best" for it.
        is_best = (match_quality_matrix == highest_quality_foreach_gt[:, None]).any(dim=0)
        match_labels[is_best] = 1
