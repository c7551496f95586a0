"""What the workers' own rows say: who is online, on which queues, started by which process.

A worker writes its row when Celery is ready (name, queues, a machine description with its
pid), says `ready` once warmed up (with its device) and heartbeats `last_seen_at`; a row silent for three heartbeats is offline
(`core.stats.online_cutoff`). The supervisor asks `ready_probe` whether the process it
started is the one serving; `/healthz` asks which queues nobody serves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.process.supervisor import Probe
from core.db import session_scope
from core.models import Worker
from core.settings import Settings
from core.stats import online_cutoff


def ready_probe(settings: Settings) -> Probe:
    """{name: pid} → {name: row} of the rows that are fresh, carry that pid and are ready
    (warmed up: `gpu_worker.warmup`); a row is its machine `info` plus its `warmup`."""

    def probe(pids: dict[str, int]) -> dict[str, dict[str, Any]]:
        with session_scope(settings) as session:
            rows = (
                session.execute(
                    select(Worker.name, Worker.info, Worker.warmup).where(
                        Worker.name.in_(list(pids)),
                        Worker.state == "ready",
                        Worker.last_seen_at >= online_cutoff(settings),
                    )
                )
                .tuples()
                .all()
            )
        return {
            name: {**(info or {}), "warmup": warmup or {}}
            for name, info, warmup in rows
            if (info or {}).get("pid") == pids[name]
        }

    return probe
