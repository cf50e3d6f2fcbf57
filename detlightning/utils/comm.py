"""Distributed helpers (detectron2's ``utils.comm``) that work unchanged in a single process.

Every function falls back to the single-process answer when ``torch.distributed`` is unavailable or not
initialised, so model and evaluation code can call them unconditionally. Lightning (or torchrun) initialises the
default process group; object collectives run over a gloo group so they never need GPU memory.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "create_local_process_group",
    "gather",
    "get_local_process_group",
    "get_local_rank",
    "get_local_size",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

_LOCAL_PROCESS_GROUP: Any = None
"""Group of the processes on this machine, set by ``create_local_process_group``."""


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 without distributed)."""
    return dist.get_world_size() if _dist_ready() else 1


def get_rank() -> int:
    """Global rank of this process (0 without distributed)."""
    return dist.get_rank() if _dist_ready() else 0


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n)
        if v is not None and v.strip().lstrip("-").isdigit():
            return int(v)
    return None


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine process group (every process calls this; ranks are machine-major).

    Afterwards ``get_local_rank``/``get_local_size`` answer from that group instead of environment variables.
    """
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("create_local_process_group() was already called")
    world_size = get_world_size()
    if world_size % num_workers_per_machine != 0:
        raise ValueError(
            f"world size {world_size} is not a multiple of num_workers_per_machine={num_workers_per_machine}"
        )
    machine = get_rank() // num_workers_per_machine
    for i in range(world_size // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        pg = dist.new_group(ranks)  # every process must take part in creating every group
        if i == machine:
            _LOCAL_PROCESS_GROUP = pg


def get_local_process_group() -> Any:
    """The group made by ``create_local_process_group``; ``RuntimeError`` if it was not called."""
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError("no local process group: call create_local_process_group(num_workers_per_machine) first")
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Rank of this process among the processes on its machine.

    From the local process group when one was created, else from ``LOCAL_RANK`` (set by torchrun and Lightning),
    else the global rank (i.e. all processes are assumed to share one machine); 0 without distributed.
    """
    if not _dist_ready():
        env = _env_int("LOCAL_RANK")
        return env if env is not None else 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    env = _env_int("LOCAL_RANK")
    return env if env is not None else get_rank()


def get_local_size() -> int:
    """Number of processes on this machine.

    From the local process group when one was created, else ``LOCAL_WORLD_SIZE`` (torchrun), else the world size
    (single machine assumed); 1 without distributed.
    """
    if not _dist_ready():
        return 1
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)
    env = _env_int("LOCAL_WORLD_SIZE")
    return env if env is not None else get_world_size()


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op with a single process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        # naming the device avoids NCCL guessing it (and warning / hanging when the guess is wrong)
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _get_global_gloo_group() -> Any:
    """A gloo group over all ranks (the default group when it already is gloo): objects travel on the CPU."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def _object_group(group: Any) -> tuple[Any, int]:
    """(group, its size) for object collectives: ``group``, else all ranks over gloo; size 1 without distributed."""
    if get_world_size() == 1:
        return None, 1
    group = _get_global_gloo_group() if group is None else group
    return group, dist.get_world_size(group=group)


def all_gather(data: Any, group: Any = None) -> list[Any]:
    """Gather picklable ``data`` from every rank; returns ``[data_rank0, data_rank1, ...]`` on every rank.

    ``group``: a process group (default: all ranks over gloo). Without distributed, ``[data]``.
    """
    group, world_size = _object_group(group)
    if world_size == 1:
        return [data]
    output: list[Any] = [None] * world_size
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: Any = None) -> list[Any]:
    """Gather picklable ``data`` on rank ``dst``: the list of every rank's data there, ``[]`` on other ranks.

    Without distributed, ``[data]``.
    """
    group, world_size = _object_group(group)
    if world_size == 1:
        return [data]
    is_dst = dist.get_rank(group=group) == dst
    output: list[Any] | None = [None] * world_size if is_dst else None
    dist.gather_object(data, output, dst=dst, group=group)
    return output if output is not None else []


def shared_random_seed() -> int:
    """A random int in [0, 2**31) that is the same on every rank (rank 0's draw)."""
    ints = np.random.randint(2**31)
    return int(all_gather(ints)[0])


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) each 0-dim tensor of ``input_dict`` over all ranks; the result is valid on rank 0 only.

    d2-parity: a ``dist.reduce`` to rank 0, so other ranks get partial sums, exactly as detectron2. All ranks must
    pass the same keys. Without distributed, ``input_dict`` itself is returned.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)  # the same order on every rank
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return dict(zip(names, values, strict=True))
