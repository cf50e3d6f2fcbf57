"""Samplers that split work across processes themselves (rank and world size from ``torch.distributed`` when it is
initialised, as under Lightning's DDP strategies), so the loaders built with them must not be re-sharded.

- ``TrainingSampler``: an infinite stream of (shuffled) indices; rank r takes elements r, r + W, ...
- ``RandomSubsetTrainingSampler``: the same on a fixed random subset.
- ``RepeatFactorTrainingSampler``: images of rare categories repeat (LVIS-style), stochastic rounding per epoch.
- ``InferenceSampler``: each index exactly once over all ranks, in contiguous shards.
- ``GroupedBatchSampler``: batches whose elements share a group id (e.g. the aspect-ratio group).

Resuming. The infinite samplers have a state (``state_dict`` / ``load_state_dict``): ``start``, the number of this
rank's indices already consumed, which the next ``iter()`` skips. And, unless ``reseed=False``, right before
yielding the element at global stream position ``p``, they seed python ``random``, numpy and torch of the process
iterating them (a data-loader worker, or the main process with ``num_workers=0``) from ``(seed, p)``: whatever the
mapper draws for an element (flips, crops) then depends on its position only, not on which worker read it or on
what ran before, so a resumed run reads exactly the data the uninterrupted run would have read.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data.sampler import BatchSampler, Sampler

from detlightning.utils import comm

__all__ = [
    "TrainingSampler",
    "RandomSubsetTrainingSampler",
    "RepeatFactorTrainingSampler",
    "InferenceSampler",
    "GroupedBatchSampler",
]

logger = logging.getLogger(__name__)

_main_process_reseeds = 0  # how often a sampler reseeded the RNGs of a process that is no data-loader worker
_pending_start: int | None = None  # set by the resume callback before the training loader is built


def main_process_reseeds() -> int:
    """How many times an infinite sampler has reseeded the RNGs of this process outside data-loader workers (the
    resume callback uses it to tell whether the main process's RNG state already follows the data position)."""
    return _main_process_reseeds


def set_pending_start(start: int | None) -> None:
    """The ``start`` the next infinite sampler constructed in this process takes (consumed once): how a resumed
    run positions the sampler of a training loader that is only built once training begins."""
    global _pending_start
    _pending_start = None if start is None else int(start)


def _take_pending_start() -> int:
    global _pending_start
    start, _pending_start = _pending_start, None
    return start or 0


_MASK64 = 2**64 - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit value from any int (neighbouring inputs give unrelated outputs)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _seed_rngs(seed: int, position: int) -> None:
    """Seed python ``random``, numpy and torch from ``(seed, position)``."""
    global _main_process_reseeds
    torch_seed = _mix64(_mix64(seed & _MASK64) ^ position)
    random.seed(torch_seed)
    np.random.seed(torch_seed >> 32)
    # the CPU generator directly: torch.manual_seed also visits every accelerator backend (~100 us a call)
    torch.default_generator.manual_seed(torch_seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(torch_seed)
    if torch.utils.data.get_worker_info() is None:
        _main_process_reseeds += 1


def _placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the given values, else torch.distributed's (0 / 1 when not initialised)."""
    resolved = (comm.get_rank() if rank is None else rank, comm.get_world_size() if world_size is None else world_size)
    if not 0 <= resolved[0] < resolved[1]:
        raise ValueError(f"rank must be in [0, world_size={resolved[1]}), got {resolved[0]}")
    return resolved


class _InfiniteSampler(Sampler[int]):
    """An endless stream of epochs, each ``_epoch(generator)`` (shuffled when ``shuffle``), from one generator seeded
    with the shared seed; process ``rank`` takes every ``world_size``-th index, skipping its first ``start``
    ones. See the module docstring for ``reseed``."""

    _seed: int
    _shuffle: bool
    _rank: int
    _world_size: int
    _start: int = 0
    _reseed: bool = True

    def _init_resume(self, reseed: bool) -> None:
        self._reseed = bool(reseed)
        self._start = _take_pending_start()
        if self._start:
            logger.info("%s resumes after %d consumed indices", type(self).__name__, self._start)

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        """``{"start": ..., "seed": ...}``: where the next ``iter()`` begins in this rank's stream."""
        return {"start": self._start, "seed": self._seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the first ``state["start"]`` indices of this rank's stream from the next ``iter()`` on."""
        start = int(state["start"])
        if start < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: 'start' must be >= 0, got {start}")
        if "seed" in state and int(state["seed"]) != self._seed:
            logger.warning("%s: the saved state has seed %d but this sampler has seed %d; the index stream differs",
                           type(self).__name__, int(state["seed"]), self._seed)
        self._start = start

    def __iter__(self) -> Iterator[int]:
        first = self._rank + self._start * self._world_size
        stream = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        if not self._reseed:
            yield from stream
            return
        for position, index in enumerate(stream, start=self._start):
            _seed_rngs(self._seed, position * self._world_size + self._rank)
            yield index

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._epoch(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class TrainingSampler(_InfiniteSampler):
    """Infinite indices in ``[0, size)``: epochs of ``randperm(size)`` (or ``arange`` without shuffle) from a
    generator seeded with ``seed``, split across processes by taking every ``world_size``-th element.

    All processes must use the same seed (None draws one shared seed). Determined entirely by ``(size,
    shuffle, seed, rank, world_size)``.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        reseed: bool = True,
    ):
        """``rank`` / ``world_size`` default to torch.distributed's (0 / 1 when not initialised); ``reseed``: seed
        the RNGs per element (module docstring)."""
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"TrainingSampler(size=) expects an int, got {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"TrainingSampler(size=) expects a positive int, got {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _placement(rank, world_size)
        self._init_resume(reseed)

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(self._size)


class RandomSubsetTrainingSampler(TrainingSampler):
    """``TrainingSampler`` over a random subset of ``int(size * subset_ratio)`` indices, drawn once with
    ``seed_subset``."""

    def __init__(
        self,
        size: int,
        subset_ratio: float,
        shuffle: bool = True,
        seed_shuffle: int | None = None,
        seed_subset: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        reseed: bool = True,
    ):
        super().__init__(size=size, shuffle=shuffle, seed=seed_shuffle, rank=rank, world_size=world_size,
                         reseed=reseed)
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(f"subset_ratio must be in (0, 1], got {subset_ratio}")
        self._size_subset = int(size * subset_ratio)
        if self._size_subset <= 0:
            raise ValueError(f"size * subset_ratio = {size} * {subset_ratio} leaves no element")
        seed_subset = int(comm.shared_random_seed() if seed_subset is None else seed_subset)
        g = torch.Generator()
        g.manual_seed(seed_subset)
        self._indexes_subset = torch.randperm(self._size, generator=g)[: self._size_subset]
        logger.info("Using RandomSubsetTrainingSampler: %d of %d samples", self._size_subset, self._size)

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        return self._indexes_subset


class RepeatFactorTrainingSampler(_InfiniteSampler):
    """Like ``TrainingSampler``, but image ``i`` appears ``repeat_factors[i]`` times per epoch on average
    (``floor(r)`` times plus once more with probability ``r - floor(r)``, redrawn each epoch)."""

    def __init__(
        self,
        repeat_factors: torch.Tensor,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        reseed: bool = True,
    ):
        """repeat_factors: (N,) float tensor, each >= 0 (usually from ``repeat_factors_from_category_frequency``)."""
        repeat_factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if repeat_factors.dim() != 1 or len(repeat_factors) == 0:
            raise ValueError(f"repeat_factors must be a non-empty 1-D tensor, got shape {tuple(repeat_factors.shape)}")
        if (repeat_factors < 0).any():
            raise ValueError("repeat_factors must be non-negative")
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _placement(rank, world_size)
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part
        self._init_resume(reseed)

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: Sequence[dict[str, Any]], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """(N,) float32 repeat factors: ``r_i = max over categories c in image i of max(1, t / f_c)`` (or
        ``sqrt(t / f_c)`` with ``sqrt=True``), where ``f_c`` is the fraction of images containing ``c``."""
        cats_per_image = [{ann["category_id"] for ann in d["annotations"]} for d in dataset_dicts]
        num_images = len(dataset_dicts)
        images_with = Counter(cat for cats in cats_per_image for cat in cats)
        freq = {cat: n / num_images for cat, n in images_with.items()}
        ratio = {cat: repeat_thresh / f for cat, f in freq.items()}
        repeat = {cat: max(1.0, math.sqrt(r) if sqrt else r) for cat, r in ratio.items()}
        for cat in sorted(repeat):
            logger.info("Cat ID %s: freq=%.2f, rep=%.2f", cat, freq[cat], repeat[cat])
        # An image repeats as often as its rarest category asks; images without annotations once.
        per_image = [max((repeat[cat] for cat in cats), default=1.0) for cats in cats_per_image]
        return torch.tensor(per_image, dtype=torch.float32)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """(M,) int64: each index repeated by its stochastically rounded factor."""
        rands = torch.rand(len(self._frac_part), generator=generator)
        rep_factors = self._int_part + (rands < self._frac_part).float()
        return torch.repeat_interleave(torch.arange(len(rep_factors)), rep_factors.long())

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        indices = self._get_epoch_indices(generator)
        if len(indices) == 0:
            raise ValueError("RepeatFactorTrainingSampler: every repeat factor rounded to 0 in this epoch")
        return indices


class InferenceSampler(Sampler[int]):
    """Each index of ``[0, size)`` exactly once across processes: rank r gets a contiguous shard, the first
    ``size % world_size`` shards one element longer. Shards may be empty when ``size < world_size``."""

    def __init__(self, size: int, *, rank: int | None = None, world_size: int | None = None):
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"InferenceSampler(size=) expects an int, got {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"InferenceSampler(size=) expects a positive int, got {size}")
        self._size = size
        self._rank, self._world_size = _placement(rank, world_size)
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        shard_size = total_size // world_size
        left = total_size % world_size
        shard_sizes = [shard_size + int(r < left) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        end = min(sum(shard_sizes[: rank + 1]), total_size)
        return range(begin, end)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)


class GroupedBatchSampler(BatchSampler):
    """Batch the indices of ``sampler`` so that each batch holds ``batch_size`` indices of one group.

    Indices are buffered per group (``group_ids[idx]``) in the order the sampler yields them; a group's buffer is
    yielded as a batch as soon as it holds ``batch_size`` indices. Partial buffers are kept (across iterations of
    this object) rather than yielded, so the number of batches is not known in advance and ``len()`` is undefined.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int] | np.ndarray, batch_size: int):
        """
        Args:
            sampler: yields dataset indices.
            group_ids: (len(dataset),) the group of each index.
            batch_size: the size of each batch.
        """
        if not isinstance(sampler, Sampler):
            raise ValueError(f"GroupedBatchSampler: sampler must be a torch.utils.data.Sampler, got {sampler!r}")
        group_ids = np.asarray(group_ids)
        if group_ids.ndim != 1:
            raise ValueError(f"GroupedBatchSampler: group_ids must be one-dimensional, got shape {group_ids.shape}")
        if batch_size <= 0:
            raise ValueError(f"GroupedBatchSampler: batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size
        self.buffer_per_group: dict[Any, list[int]] = {k: [] for k in np.unique(group_ids).tolist()}

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.sampler:
            buffer = self.buffer_per_group[self.group_ids[idx].item()]
            buffer.append(idx)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()

    def __len__(self) -> int:
        raise NotImplementedError("len() of GroupedBatchSampler is not well-defined: partial groups are held back")
