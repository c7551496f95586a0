"""`/healthz` names what is missing: a supervised worker that is not serving, a queue nobody serves."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bot.process.supervisor import WorkerState
from bot.web.app import create_app
from core.db import session_scope
from core.models import Worker
from core.settings import Settings

RESTARTING = WorkerState(
    "train@box", "train", "restarting", None, 1, "exited (killed by SIGKILL); restarting in 2 s"
)
READY = WorkerState("sample@box", "sample", "ready", 42, 0, "ready on CPU")


def register(settings: Settings, name: str, kind: str) -> None:
    with session_scope(settings) as s:
        s.add(Worker(name=name, hostname="box", queues=settings.queue_name(kind), info={}))


def healthz(settings: Settings, states: list[WorkerState] | None) -> dict[str, object]:
    app = create_app(settings, (lambda: states) if states is not None else None)
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 200  # a load balancer keeps the web process while workers are down
    return dict(response.json())


def test_a_dead_supervised_worker_is_named(db_settings: Settings) -> None:
    register(db_settings, "sample@box", "sample")
    register(db_settings, "train@box", "train")  # killed a moment ago: its row is still fresh
    health = healthz(db_settings, [RESTARTING, READY])
    assert health["status"] == "degraded"
    assert health["workers"] == ["sample@box"]
    assert health["missing"] == [
        {
            "worker": "train@box",
            "queues": ["train"],
            "state": "restarting",
            "detail": "exited (killed by SIGKILL); restarting in 2 s",
        }
    ]


def test_without_a_supervisor_a_queue_nobody_serves_is_named(db_settings: Settings) -> None:
    register(db_settings, "sample@elsewhere", "sample")
    health = healthz(db_settings, None)
    assert health["status"] == "degraded"
    assert health["missing"] == [
        {"worker": None, "queues": ["train"], "state": "absent", "detail": "no train worker online"}
    ]
    register(db_settings, "train@elsewhere", "train")
    assert healthz(db_settings, None)["status"] == "ok"


def test_all_serving_is_ok(db_settings: Settings) -> None:
    register(db_settings, "train@box", "train")
    register(db_settings, "sample@box", "sample")
    ready_train = WorkerState("train@box", "train", "ready", 41, 0, "ready on CPU")
    health = healthz(db_settings, [ready_train, READY])
    assert (health["status"], health["missing"]) == ("ok", [])
    assert health["workers"] == ["sample@box", "train@box"]
