"""Training across processes, as `accelerate launch` runs it on several GPUs: here two CPU
processes with the gloo backend. Gradients are averaged over the ranks, so every rank ends
with the same weights; each rank draws its own batch; only the main process checkpoints."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from gpu_worker.training.trainer import Hooks
from tests.gpu_worker.test_training_step import _trainer

CONFIG: dict[str, Any] = dict(learning_rate=1e-2, steps=4, checkpoint_every=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_and_dump(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """One rank: what `accelerate launch` sets up, then the same training as the test below."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    saved: list[int] = []
    trainer = _trainer(Path(model_dir), **CONFIG)
    trainer.train(Hooks(save_checkpoint=lambda step, state: saved.append(step)))
    torch.save(
        {
            "weights": {k: p.detach().cpu() for k, p in trainer.trainable.items()},
            "saved": saved,
            "world": trainer.acc.num_processes,
            "first_seed": trainer.seed_for(0),
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


def test_two_processes_train_one_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    mp.spawn(_train_and_dump, args=(2, _free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["first_seed"] != ranks[1]["first_seed"]  # each rank its own photos and noise
    assert ranks[0]["saved"] == [2] and ranks[1]["saved"] == []  # one writer
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name  # averaged gradients, one model

    single = _trainer(tiny_model_dir, **CONFIG)  # one process: rank 0's batches only
    single.train(Hooks())
    assert any(not torch.allclose(p.detach(), ranks[0]["weights"][k]) for k, p in single.trainable.items()), (
        "rank 1's batches changed the result"
    )
