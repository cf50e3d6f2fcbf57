"""subsample_labels: counts, positive fraction, shortages, bg_label, randomness."""
from __future__ import annotations

import torch

from detlightning.modeling.sampling import subsample_labels


def _labels(num_pos: int, num_neg: int, num_ignore: int, bg_label: int = 0) -> torch.Tensor:
    pos = torch.arange(num_pos) % 3 + (1 if bg_label == 0 else 0)  # foreground class ids != bg_label
    labels = torch.cat([pos, torch.full((num_neg,), bg_label), torch.full((num_ignore,), -1)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def _check(labels: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, bg_label: int) -> None:
    assert pos.dtype == torch.int64 and neg.dtype == torch.int64
    assert len(set(pos.tolist())) == len(pos) and len(set(neg.tolist())) == len(neg)
    assert ((labels[pos] != -1) & (labels[pos] != bg_label)).all()
    assert (labels[neg] == bg_label).all()


def test_fraction_respected() -> None:
    torch.manual_seed(0)
    labels = _labels(10, 50, 5)
    pos, neg = subsample_labels(labels, num_samples=20, positive_fraction=0.25, bg_label=0)
    assert len(pos) == 5 and len(neg) == 15
    _check(labels, pos, neg, 0)


def test_few_positives_filled_with_negatives() -> None:
    torch.manual_seed(0)
    labels = _labels(2, 50, 5)
    pos, neg = subsample_labels(labels, num_samples=20, positive_fraction=0.5, bg_label=0)
    assert len(pos) == 2 and len(neg) == 18
    _check(labels, pos, neg, 0)


def test_few_negatives_returns_fewer() -> None:
    torch.manual_seed(0)
    labels = _labels(3, 4, 5)
    pos, neg = subsample_labels(labels, num_samples=20, positive_fraction=0.5, bg_label=0)
    assert len(pos) == 3 and len(neg) == 4
    assert sorted(torch.cat([pos, neg]).tolist()) == sorted((labels != -1).nonzero().flatten().tolist())


def test_int_truncation_of_positive_quota() -> None:
    torch.manual_seed(0)
    labels = _labels(30, 30, 0)
    pos, neg = subsample_labels(labels, num_samples=7, positive_fraction=0.5, bg_label=0)
    assert len(pos) == 3 and len(neg) == 4  # int(3.5) = 3


def test_background_class_as_num_classes() -> None:
    # ROI heads use bg_label = num_classes and foreground classes 0..K-1
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 80, 80, 80, 2, -1, 80])
    pos, neg = subsample_labels(labels, num_samples=4, positive_fraction=0.25, bg_label=80)
    assert len(pos) == 1 and len(neg) == 3
    _check(labels, pos, neg, 80)


def test_random_but_seeded() -> None:
    labels = _labels(40, 200, 0)
    torch.manual_seed(1)
    a = subsample_labels(labels, 32, 0.25, 0)
    torch.manual_seed(1)
    b = subsample_labels(labels, 32, 0.25, 0)
    torch.manual_seed(2)
    c = subsample_labels(labels, 32, 0.25, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_empty() -> None:
    pos, neg = subsample_labels(torch.zeros(0, dtype=torch.int64), 8, 0.5, 0)
    assert len(pos) == 0 and len(neg) == 0
