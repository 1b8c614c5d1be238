"""Multi-process training: 2-process DDP on CPU (gloo), launched with torchrun as on a cluster."""

import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import EXAMPLES

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               str(WORKER), str(tmp_path), str(EXAMPLES)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    # the ranks started from different random weights and read disjoint halves of the data...
    assert any(not torch.equal(ranks[0]["initial"][k], ranks[1]["initial"][k]) for k in ranks[0]["initial"])
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(10))
    # ...yet end with identical weights, which moved away from the initial ones
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), key
    moved = sum(float((ranks[0]["state_dict"][k].float() - ranks[0]["initial"][k].float()).abs().sum()) for k in ranks[0]["initial"])
    assert moved > 0
