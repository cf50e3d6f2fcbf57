"""``launch``: run a function in one process per device, on one or several machines (detectron2's
``detectron2.engine.launch``), for plain loops and ``DefaultTrainer`` scripts written the detectron2 way.

The Lightning path does not need it: ``scripts/train.py trainer=ddp`` lets Lightning start the processes.

    def main(args):
        ...                                            # each process: comm.get_rank(), comm.get_local_rank()

    launch(main, num_gpus_per_machine=8, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))

On a machine without CUDA, ``num_gpus_per_machine`` processes still start and talk over gloo (useful to test
distributed code on a laptop); with CUDA each process takes the device of its local rank and uses NCCL.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Call ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes (in this one when that is 1).

    Args:
        num_gpus_per_machine: processes on this machine (one per GPU).
        num_machines / machine_rank: the machines taking part and this one's index.
        dist_url: the rendezvous, ``tcp://host:port``; ``"auto"`` (single machine only): a free local port.
        timeout: collective-operation timeout of the process group.
    """
    world_size = num_machines * num_gpus_per_machine
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"launch: num_gpus_per_machine and num_machines must be >= 1, got "
                         f"{num_gpus_per_machine} and {num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"launch: machine_rank must be in [0, {num_machines}), got {machine_rank}")
    if world_size == 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError('launch: dist_url="auto" only works on one machine; pass tcp://<master ip>:<port>')
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared file system: %s", dist_url)
    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
        start_method="spawn",
    )


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: timedelta,
) -> None:
    use_cuda = torch.cuda.is_available()
    if use_cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(f"launch: {num_gpus_per_machine} processes per machine but only "
                           f"{torch.cuda.device_count()} CUDA devices")
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url, world_size=world_size,
                            rank=global_rank, timeout=timeout)
    try:
        comm.create_local_process_group(num_gpus_per_machine)
        if use_cuda:
            torch.cuda.set_device(local_rank)
        comm.synchronize()
        main_func(*args)
        # no rank tears the group down while another still has collectives in flight (seen as an abort at exit)
        comm.synchronize()
    finally:
        dist.destroy_process_group()
