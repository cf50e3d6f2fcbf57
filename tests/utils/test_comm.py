from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detlightning.utils import comm


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this test process")
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1
    assert comm.is_main_process()
    comm.synchronize()  # no-op, must not raise
    obj = {"a": [1, 2]}
    assert comm.all_gather(obj) == [obj]
    assert comm.all_gather(obj)[0] is obj
    assert comm.gather(obj, dst=0) == [obj]
    d = {"loss": torch.tensor(2.0)}
    assert comm.reduce_dict(d) is d
    seed = comm.shared_random_seed()
    assert isinstance(seed, int) and 0 <= seed < 2**31


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, result_dir: str) -> None:
    dist.init_process_group(
        backend="gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        assert comm.get_world_size() == world_size
        assert comm.get_rank() == rank
        assert comm.is_main_process() == (rank == 0)
        payload = {"rank": rank, "items": list(range(rank + 1))}
        gathered_all = comm.all_gather(payload)
        gathered_0 = comm.gather(f"from-{rank}", dst=0)
        gathered_1 = comm.gather(rank * 10, dst=1)
        seed = comm.shared_random_seed()
        # rank r contributes loss = r + 1 and n = 2 * (r + 1)
        reduced = comm.reduce_dict({"n": torch.tensor(2.0 * (rank + 1)), "loss": torch.tensor(rank + 1.0)})
        comm.synchronize()
        torch.save(
            {
                "all": gathered_all,
                "g0": gathered_0,
                "g1": gathered_1,
                "seed": seed,
                "reduced": {k: float(v) for k, v in reduced.items()},
            },
            f"{result_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_collectives(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    world_size = 2
    mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    expected_all = [{"rank": 0, "items": [0]}, {"rank": 1, "items": [0, 1]}]
    assert res[0]["all"] == expected_all and res[1]["all"] == expected_all
    assert res[0]["g0"] == ["from-0", "from-1"] and res[1]["g0"] == []
    assert res[0]["g1"] == [] and res[1]["g1"] == [0, 10]
    assert res[0]["seed"] == res[1]["seed"]
    # rank 0: averages over the 2 ranks: loss (1 + 2) / 2, n (2 + 4) / 2
    assert res[0]["reduced"] == {"loss": 1.5, "n": 3.0}
