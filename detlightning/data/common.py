"""Dataset wrappers used by the loaders: list -> Dataset, lazy mapping with retry, sampler -> iterable, and
aspect-ratio grouping into batches."""
from __future__ import annotations

import itertools
import logging
import pickle
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

__all__ = ["DatasetFromList", "MapDataset", "ToIterableDataset", "AspectRatioGroupedDataset"]

logger = logging.getLogger(__name__)


def _shard_iterator_dataloader_worker(iterable: Iterable, chunk_size: int = 1) -> Iterator:
    """Yield this data-loader worker's share of ``iterable``: chunks ``i, i + W, ...`` of size ``chunk_size``."""
    worker_info = data.get_worker_info()
    if worker_info is None or worker_info.num_workers == 1:
        yield from iterable
        return
    # Round-robin chunks; with batched iteration, the DataLoader fetches workers in the same order.
    chunk_i = 0
    it = iter(iterable)
    while True:
        chunk = list(itertools.islice(it, chunk_size))
        if not chunk:
            return
        if chunk_i % worker_info.num_workers == worker_info.id:
            yield from chunk
        chunk_i += 1


class _MapIterableDataset(data.IterableDataset):
    """Map an IterableDataset lazily, dropping the elements the function maps to None."""

    def __init__(self, dataset: data.IterableDataset, map_func: Callable[[Any], Any]):
        self._dataset = dataset
        self._map_func = map_func

    def __len__(self) -> int:
        return len(self._dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for x in map(self._map_func, self._dataset):
            if x is not None:
                yield x


class MapDataset(data.Dataset):
    """Apply ``map_func`` lazily to each element of ``dataset``.

    If ``map_func`` returns None for an index (e.g. a bad sample the mapper chose to skip), another index is
    tried instead, chosen at random among those that have not failed, with a warning; the failed index is not
    tried again. On an IterableDataset, None results are dropped.
    """

    def __new__(cls, dataset: Any, map_func: Callable[[Any], Any]) -> Any:
        if isinstance(dataset, data.IterableDataset):
            return _MapIterableDataset(dataset, map_func)
        return super().__new__(cls)

    def __getnewargs__(self) -> tuple[Any, Any]:
        return self._dataset, self._map_func

    def __init__(self, dataset: Any, map_func: Callable[[Any], Any]):
        self._dataset = dataset
        self._map_func = map_func
        self._rng = random.Random(42)
        self._fallback_candidates = set(range(len(dataset)))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int) -> Any:
        retry_count = 0
        cur_idx = int(idx)
        while True:
            result = self._map_func(self._dataset[cur_idx])
            if result is not None:
                self._fallback_candidates.add(cur_idx)
                return result
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError(f"MapDataset: the map function returned None for every element (last: {cur_idx})")
            new_idx = self._rng.choice(sorted(self._fallback_candidates))
            logger.warning(
                "MapDataset: map function returned None for index %d (requested %d, retry %d); using index %d",
                cur_idx,
                idx,
                retry_count,
                new_idx,
            )
            cur_idx = new_idx


class DatasetFromList(data.Dataset):
    """A map-style Dataset over a list.

    ``serialize=True`` pickles every element into one numpy byte buffer: data-loader workers then share it
    copy-on-write instead of touching (and so copying) millions of Python objects through refcounts.
    """

    def __init__(self, lst: list, copy: bool = True, serialize: bool = True):
        self._lst = lst
        self._copy = copy
        self._serialize = serialize
        if self._serialize:
            logger.info("Serializing %d elements to byte tensors and concatenating them all ...", len(self._lst))
            buffers = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in self._lst]
            self._addr = np.cumsum(np.asarray([len(x) for x in buffers], dtype=np.int64))
            self._buffer = np.concatenate(buffers) if buffers else np.zeros(0, dtype=np.uint8)
            logger.info("Serialized dataset takes %.2f MiB", len(self._buffer) / 1024**2)
            self._lst = []

    def __len__(self) -> int:
        return len(self._addr) if self._serialize else len(self._lst)

    def __getitem__(self, idx: int) -> Any:
        if self._serialize:
            start_addr = 0 if idx == 0 else int(self._addr[idx - 1])
            end_addr = int(self._addr[idx])
            return pickle.loads(memoryview(self._buffer[start_addr:end_addr]))
        if self._copy:
            import copy as _copy

            return _copy.deepcopy(self._lst[idx])
        return self._lst[idx]


class ToIterableDataset(data.IterableDataset):
    """Turn a map-style dataset into an IterableDataset by reading the indices a sampler yields.

    With ``shard_sampler=True`` each data-loader worker takes a disjoint share of the indices (in chunks of
    ``shard_chunk_size``), so workers never duplicate samples. (The sampler handles the split across processes.)
    """

    def __init__(
        self,
        dataset: data.Dataset,
        sampler: Sampler | Iterable[int],
        shard_sampler: bool = True,
        shard_chunk_size: int = 1,
    ):
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("ToIterableDataset needs a map-style dataset, got an IterableDataset")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self) -> Iterator[Any]:
        sampler = (
            _shard_iterator_dataloader_worker(self.sampler, self.shard_chunk_size)
            if self.shard_sampler
            else self.sampler
        )
        for idx in sampler:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batch elements of similar aspect ratio (landscape ``w > h`` vs portrait) together, which reduces padding.

    ``dataset`` yields dicts with ``width`` and ``height``; batches of ``batch_size`` are yielded as lists in the
    order they fill up.
    """

    def __init__(self, dataset: Iterable[dict[str, Any]], batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self._buckets: list[list[dict[str, Any]]] = [[] for _ in range(2)]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for d in self.dataset:
            w, h = d["width"], d["height"]
            bucket_id = 0 if w > h else 1
            bucket = self._buckets[bucket_id]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                # Clear in place: the bucket objects are reused across batches.
                del bucket[:]
                yield batch
