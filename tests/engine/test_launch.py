"""detectron2's script helpers on detlightning: launch(), default_argument_parser(), default_setup(cfg, args),
default_writers(), create_ddp_model()."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from detlightning.config import get_cfg
from detlightning.engine import (
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    launch,
)
from detlightning.utils import comm
from detlightning.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter


def _report_rank(out_dir: str, payload: str) -> None:
    """Runs in every launched process: what the process group says, written to one file per rank."""
    gathered = comm.all_gather(comm.get_rank())
    model = create_ddp_model(torch.nn.Linear(2, 1))
    info = {
        "rank": comm.get_rank(), "world": comm.get_world_size(), "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(), "gathered": gathered, "payload": payload,
        "ddp": type(model).__name__,
    }
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps(info))


def test_launch_two_processes_on_cpu(tmp_path: Path) -> None:
    launch(_report_rank, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path), "hello"))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, rep in enumerate(reports):
        assert rep == {"rank": r, "world": 2, "local_rank": r, "local_size": 2, "gathered": [0, 1],
                       "payload": "hello", "ddp": "DistributedDataParallel"}


def test_launch_single_process_calls_in_place(tmp_path: Path) -> None:
    launch(_report_rank, num_gpus_per_machine=1, args=(str(tmp_path), "solo"))
    rep = json.loads((tmp_path / "rank0.json").read_text())
    assert rep["world"] == 1 and rep["ddp"] == "Linear"  # no process group: the model is not wrapped


def test_default_argument_parser_reads_detectron2_flags() -> None:
    args = default_argument_parser().parse_args(
        ["--config-file", "x.yaml", "--eval-only", "--num-gpus", "2", "--resume", "SOLVER.BASE_LR", "0.01"]
    )
    assert (args.config_file, args.eval_only, args.resume, args.num_gpus) == ("x.yaml", True, True, 2)
    assert (args.num_machines, args.machine_rank, args.dist_url) == (1, 0, "auto")
    assert args.opts == ["SOLVER.BASE_LR", "0.01"]


def test_default_setup_with_a_detectron2_cfgnode(tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 123
    args = default_argument_parser().parse_args([])
    assert default_setup(cfg, args) == 123
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "SEED: 123" in saved and "OUTPUT_DIR" in saved


def test_default_writers_write_metrics_json(tmp_path: Path) -> None:
    writers = default_writers(str(tmp_path), max_iter=10)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]
    with EventStorage(0) as storage:
        storage.put_scalar("total_loss", 1.5)
        for w in writers:
            w.write()
    for w in writers:
        w.close()
    line = json.loads((tmp_path / "metrics.json").read_text().splitlines()[0])
    assert line["iteration"] == 0 and line["total_loss"] == 1.5
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
