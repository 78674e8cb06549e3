"""Rank processes for the data-parallel tests (module-level, so that spawned processes can import them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world: int, port: int, dataset: str, kwargs: dict, report: str,
              die_after_checkpoint: int = 0) -> None:
    """One rank of a gloo run started by hand (as torchrun would: the env:// variables), training with
    ``gaussiantalker.train.train(dataset, **kwargs)``; writes ``report`` (JSON: ok / error text, time).

    ``die_after_checkpoint=k``: this rank SIGKILLs itself right after checkpoint ``k`` is complete (a rank that
    dies at a known point, so the test does not race the training)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    from gaussiantalker.train import Trainer, train

    if die_after_checkpoint:
        save = Trainer.save_checkpoint

        def save_then_die(self):
            path = save(self)
            if self.state.global_iteration == die_after_checkpoint:
                Path(report).write_text(json.dumps({"died": time.time()}))
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        Trainer.save_checkpoint = save_then_die
    try:
        train(dataset, **kwargs)
    except Exception as exc:  # the test reads what the surviving rank reports
        Path(report).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "time": time.time()}))
        return
    Path(report).write_text(json.dumps({"ok": True, "time": time.time()}))


def main_first_rank(rank: int, world: int, port: int, marker: str, report: str) -> None:
    """One gloo rank calling ``on_main_first``: rank 0 writes ``marker`` and returns its text to every rank."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from gaussiantalker.distributed import on_main_first, shutdown

    def work():
        time.sleep(1.0)  # the other rank is already waiting
        Path(marker).write_text(f"made by rank {rank}")
        return Path(marker).read_text()

    got = on_main_first(work, "cpu", "test work")
    Path(report).write_text(json.dumps({"got": got, "marker_seen": Path(marker).is_file()}))
    shutdown()


def die_on_rank_1(device: str = "cpu") -> str:
    """Launched by ``gaussiantalker.distributed.launch``: rank 1 SIGKILLs itself, rank 0 waits (the launcher must stop
    it)."""
    if os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
    return "rank 0 was not stopped"


def hash_rank(rank: int, world: int, port: int, report: str) -> None:
    """One gloo rank whose parameters differ from the other's in one element: the hash check must stop both."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    from gaussiantalker.distributed import DistributedError, init, shutdown

    comm = init("cpu")
    same = {"xyz": torch.ones(100, 3)}
    comm.check_identical(same, "global iteration 100")  # identical: passes
    differ = {"xyz": torch.ones(100, 3)}
    differ["xyz"][57, 1] += 1e-6 * rank
    try:
        comm.check_identical(differ, "global iteration 200")
        result = {"error": None}
    except DistributedError as exc:
        result = {"error": str(exc)}
    Path(report).write_text(json.dumps(result))
    shutdown()
