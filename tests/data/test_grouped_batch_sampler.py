"""GroupedBatchSampler: batches of one group, in the order the sampler yields indices."""
from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader, SequentialSampler

from detlightning.data.samplers import GroupedBatchSampler, TrainingSampler

GROUPS = [0, 1, 0, 1, 1, 0, 0, 1, 0, 0]  # group 0: 0 2 5 6 8 9, group 1: 1 3 4 7


# list(iter(...)): list(sampler) would ask len() for a size hint, which raises as in detectron2
def test_batches_are_emitted_when_a_group_fills_up():
    sampler = GroupedBatchSampler(SequentialSampler(range(10)), GROUPS, batch_size=2)
    assert list(iter(sampler)) == [[0, 2], [1, 3], [5, 6], [4, 7], [8, 9]]


def test_partial_groups_are_held_back_and_carried_to_the_next_pass():
    sampler = GroupedBatchSampler(SequentialSampler(range(10)), np.array(GROUPS), batch_size=3)
    # group 1 fills at index 4, group 0 at 5 and again at 9; index 7 waits
    assert list(iter(sampler)) == [[1, 3, 4], [0, 2, 5], [6, 8, 9]]
    assert sampler.buffer_per_group == {0: [], 1: [7]}
    # the next pass starts from the leftover: group 1 is [7, 1, 3] at index 3, group 0 fills at 5 and 9
    assert list(iter(sampler)) == [[7, 1, 3], [0, 2, 5], [6, 8, 9]]
    assert sampler.buffer_per_group == {0: [], 1: [4, 7]}
    with pytest.raises(NotImplementedError):
        len(sampler)


def test_with_an_infinite_sampler_and_a_data_loader():
    # aspect-ratio groups as detectron2 builds them: 1 for wide images, 0 for tall ones
    widths = np.array([5, 3, 8, 2, 9, 1, 4, 7])
    heights = np.array([4, 6, 2, 5, 3, 7, 6, 1])
    group_ids = (widths > heights).astype(np.int64)
    batch_sampler = GroupedBatchSampler(TrainingSampler(8, shuffle=True, seed=3), group_ids, batch_size=2)
    loader = DataLoader(list(range(8)), batch_sampler=batch_sampler, collate_fn=lambda b: b)
    batches = [b for _, b in zip(range(12), loader)]
    assert all(len(b) == 2 and group_ids[b[0]] == group_ids[b[1]] for b in batches)
    assert {int(group_ids[b[0]]) for b in batches} == {0, 1}


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="Sampler"):
        GroupedBatchSampler(list(range(4)), [0, 0, 1, 1], 2)
    with pytest.raises(ValueError, match="one-dimensional"):
        GroupedBatchSampler(SequentialSampler(range(4)), [[0, 0], [1, 1]], 2)
