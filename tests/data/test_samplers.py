from __future__ import annotations

import itertools
import math

import pytest
import torch

from detlightning.data.samplers import (
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)


@pytest.mark.parametrize("size", [1, 2, 7, 10, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_inference_sampler_shards_without_duplicates_or_losses(size, world_size):
    shards = [list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
    flat = [i for s in shards for i in s]
    assert flat == list(range(size))  # contiguous, in order, each index once
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert [len(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)] == lengths


def test_training_sampler_determinism_and_rank_split():
    take = lambda s, n: list(itertools.islice(iter(s), n))  # noqa: E731
    a, b = take(TrainingSampler(10, seed=3), 30), take(TrainingSampler(10, seed=3), 30)
    assert a == b
    assert a != take(TrainingSampler(10, seed=4), 30)
    # each epoch (block of 10) is a permutation
    for k in range(3):
        assert sorted(a[10 * k : 10 * (k + 1)]) == list(range(10))
    assert a[:10] != a[10:20]  # epochs are reshuffled
    # the same permutations as torch.randperm with a generator seeded like that
    g = torch.Generator().manual_seed(3)
    assert a == [i for _ in range(3) for i in torch.randperm(10, generator=g).tolist()]
    # rank r of W takes every W-th element of the global stream, so ranks never overlap within a step
    ranks = [take(TrainingSampler(10, seed=3, rank=r, world_size=3), 10) for r in range(3)]
    for r in range(3):
        assert ranks[r] == a[r::3][:10]
    assert take(TrainingSampler(5, shuffle=False, seed=0), 7) == [0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(ValueError):
        TrainingSampler(0)
    with pytest.raises(TypeError):
        TrainingSampler(3.0)  # type: ignore[arg-type]


def test_repeat_factors_by_hand():
    dicts = [
        {"annotations": [{"category_id": 0}]},
        {"annotations": [{"category_id": 0}, {"category_id": 1}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": []},
    ]
    # freq: class 0 in 4/5 images (0.8), class 1 in 1/5 (0.2); threshold 0.5
    # r_0 = max(1, 0.5 / 0.8) = 1; r_1 = max(1, 0.5 / 0.2) = 2.5 (sqrt: sqrt(2.5))
    rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, sqrt=False)
    torch.testing.assert_close(rf, torch.tensor([1.0, 2.5, 1.0, 1.0, 1.0]))
    rf_sqrt = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, sqrt=True)
    torch.testing.assert_close(rf_sqrt, torch.tensor([1.0, math.sqrt(2.5), 1.0, 1.0, 1.0]))

    # integer factors: each epoch has exactly r_i copies of i
    s = RepeatFactorTrainingSampler(torch.tensor([1.0, 3.0, 0.0, 2.0]), seed=0, shuffle=False)
    assert list(itertools.islice(iter(s), 12)) == [0, 1, 1, 1, 3, 3] * 2
    # fractional factor 2.5: 2 or 3 copies, 2.5 on average
    s = RepeatFactorTrainingSampler(rf, seed=0, shuffle=True)
    counts = torch.bincount(torch.tensor(list(itertools.islice(iter(s), 20000))), minlength=5).float()
    ratio = counts[1] / counts[0]
    assert 2.4 < ratio < 2.6


def test_random_subset_sampler():
    s = RandomSubsetTrainingSampler(20, 0.5, seed_shuffle=0, seed_subset=1)
    first = list(itertools.islice(iter(s), 30))
    assert len(set(first)) == 10 and set(first[:10]) == set(first[10:20])


def _distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import json
    import os

    import torch.distributed as dist

    from detlightning.data import build_detection_test_loader

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        np_seed = 1000 + rank  # different local draws: the shared seed must still agree
        import numpy as np

        np.random.seed(np_seed)
        train = list(itertools.islice(iter(TrainingSampler(6)), 6))  # seed=None: broadcast from rank 0
        infer = list(InferenceSampler(7))
        loader = build_detection_test_loader(list(range(7)), mapper=None, batch_size=2)
        loaded = [x for b in loader for x in b]
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump({"train": train, "infer": infer, "loaded": loaded}, f)
    finally:
        dist.destroy_process_group()


def test_samplers_read_rank_from_torch_distributed(tmp_path):
    import json
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.start_processes(_distributed_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    res = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert res[0]["infer"] + res[1]["infer"] == list(range(7))
    assert res[0]["loaded"] + res[1]["loaded"] == list(range(7))
    # same shared seed on both ranks: together they cover whole epochs of one permutation stream, disjointly
    merged = [x for pair in zip(res[0]["train"], res[1]["train"]) for x in pair]
    assert sorted(merged[:6]) == list(range(6)) and sorted(merged[6:]) == list(range(6))
