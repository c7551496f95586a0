"""The bot host of the multi-host test, run inside the bot's network namespace.

`python -m tests.helpers.multihost_bot` reads DREAMBOT_* settings from its environment and
then serves requests from the test, one JSON line each on stdin ({"op": ..., **args}), with
one JSON line each on stdout ({"ok": true, "value": ...} or {"ok": false, "error": ...}).
Whatever it does (submit jobs, read rows and stored images, run the sweeper) it does over
the lab's network from the bot host's own address, exactly as the bot would.

The same script plays a worker host caught mid-transaction (`claim`, then `hold_row`).
`BotHost` is the test's side: it starts the script with `Lab.spawn` and calls it.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

if __name__ != "__main__":  # the test's side needs only the lab
    from tests.helpers.multihost import Lab


class Bot:
    """What the bot host does on request. Only standard settings and public functions."""

    def __init__(self) -> None:
        from core.logs import setup_logging
        from core.settings import load_settings

        self.settings = load_settings(_env_file=None)
        setup_logging(self.settings)  # to stderr, the bot host's log: the sweeper says what it did
        self.sweeper: Any = None
        self.held: list[Any] = []  # sessions left mid-transaction on purpose (op_hold_row)

    def op_wait_services(self, services: list[tuple[str, int]], within: float) -> list[str]:
        from tests.helpers.profile import port_open

        deadline = time.monotonic() + within
        waiting = [(h, p) for h, p in services]
        while waiting and time.monotonic() < deadline:
            waiting = [(h, p) for h, p in waiting if not port_open(h, p)]
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"no answer from {waiting}")
        return [f"{h}:{p}" for h, p in services]

    def op_setup(self, bucket: bool = True) -> str | None:
        """The bucket (an operator's one-off), then the schema (`dreambot db upgrade`)."""
        from core import migrate
        from core.storage import storage_from_settings

        if bucket:
            store: Any = storage_from_settings(self.settings)  # an S3Storage: s3:// settings
            store.client.create_bucket(Bucket=store.bucket)
        return migrate.upgrade(self.settings)

    def op_workers(self) -> dict[str, str]:
        from sqlalchemy import select

        from core.db import session_scope
        from core.models import Worker

        with session_scope(self.settings) as session:
            return dict(session.execute(select(Worker.name, Worker.queues)).all())  # type: ignore[arg-type]

    def op_prepare(self, model_dir: str) -> dict[str, int]:
        """A person with a trained subject (a LoRA to draw with) and a subject to train."""
        from tests.helpers.lora import make_lora_bytes, make_subject, make_user
        from tests.helpers.training import make_trained_subject_row

        owner = make_user(self.settings, "u1")
        drawn = make_subject(self.settings, owner, make_lora_bytes(Path(model_dir), seed=1))
        trained = make_trained_subject_row(
            self.settings, Path(model_dir), name="mug", token="sks", class_noun="cat", user="u1"
        )
        return {"owner": owner, "drawn": drawn, "trained": trained}

    def op_submit(self, **kwargs: Any) -> int:
        from core import jobs

        return jobs.submit(self.settings, **kwargs).id

    def op_claim(self, job_id: int, worker: str) -> int | None:
        from core import jobs

        lease = jobs.claim(self.settings, job_id, worker)
        return None if lease is None else lease.attempt

    def op_hold_row(self, job_id: int) -> bool:
        """Write the job's heartbeat and leave the transaction open, as a worker does for a
        moment inside every heartbeat: the row stays locked until this session ends."""
        from sqlalchemy import update

        from core.db import session_factory
        from core.dbclock import db_now
        from core.models import Job

        session = session_factory(self.settings)()
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=db_now()))
        self.held.append(session)
        return True

    def op_jobs(self, ids: list[int]) -> list[dict[str, Any]]:
        from core.db import session_scope
        from core.models import Job

        fields = ("id", "kind", "status", "attempt", "worker", "progress", "result", "error")
        with session_scope(self.settings) as session:
            rows = [session.get(Job, i) for i in ids]
            return [{f: getattr(r, f) for f in fields} for r in rows if r is not None]

    def op_stored(self, prefix: str) -> list[str]:
        from core.storage import storage_from_settings

        return sorted(storage_from_settings(self.settings).list(prefix))

    def op_read(self, key: str) -> dict[str, Any]:
        import hashlib

        from core.storage import storage_from_settings

        data = storage_from_settings(self.settings).read_bytes(key)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def op_images(self, job_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
        """Each job's image rows, and what the bot host reads back from storage for each."""
        from sqlalchemy import select

        from core.db import session_scope
        from core.models import Image
        from core.storage import storage_from_settings

        store = storage_from_settings(self.settings)
        with session_scope(self.settings) as session:
            rows = session.execute(
                select(Image.job_id, Image.storage_key, Image.seed).where(Image.job_id.in_(job_ids))
            ).all()
        out: dict[str, list[dict[str, Any]]] = {str(j): [] for j in job_ids}
        for job_id, key, seed in rows:
            data = store.read_bytes(key)
            out[str(job_id)].append(
                {"key": key, "seed": seed, "png": data.startswith(b"\x89PNG"), "bytes": len(data)}
            )
        return out

    def op_start_sweeper(self) -> bool:
        from core.sweeper import SweeperThread

        self.sweeper = SweeperThread(self.settings)
        self.sweeper.start()
        return True

    def op_quit(self) -> bool:
        if self.sweeper is not None:
            self.sweeper.stop()
        return True


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints go to the log, never into the reply stream
    bot = Bot()
    replies.write(json.dumps({"ok": True, "value": "ready"}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            reply = {"ok": True, "value": getattr(bot, f"op_{op}")(**request)}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        replies.write(json.dumps(reply, default=str) + "\n")
        if op == "quit":
            break


class BotHost:
    """The test's handle on the script: `call(op, **args)` returns the value or raises."""

    def __init__(self, lab: Lab, host: str, env: dict[str, str], name: str = "bot") -> None:
        self.lab = lab
        self.name = name
        argv = [sys.executable, "-m", "tests.helpers.multihost_bot"]
        self.proc = lab.spawn(host, argv, env=env, name=name, pipes=True)
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self._expect(120)

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                self.replies.put({"ok": False, "error": f"not a reply: {line[:300]!r}"})
        self.replies.put({"ok": False, "error": "the bot host script exited"})

    def _expect(self, timeout: float) -> Any:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no reply from {self.name} in {timeout}s\n{self.lab.log(self.name)}"
            ) from None
        if not reply["ok"]:
            raise RuntimeError(f"{self.name}: {reply['error']}\n{self.lab.log(self.name)}")
        return reply["value"]

    def call(self, op: str, timeout: float = 120, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return self._expect(timeout)


if __name__ == "__main__":
    serve()
