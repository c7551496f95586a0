"""Several hosts on one machine: Linux network namespaces joined by a switch (a bridge).

- services host: a throwaway PostgreSQL cluster, Redis and moto's S3 server, each bound to
  the host's own address;
- bot host: submits jobs, runs the sweeper and reads results (tests/helpers/multihost_bot.py);
- two worker hosts: `dreambot worker --cpu` (a train and a sample worker each), each with
  its own hostname and data folder.

Hosts share nothing but the network (and, as a stand-in for each host's model copy, the
tiny model's folder). Mid-training the training host's cable is pulled: the sweeper on the
bot host requeues the job and the other host resumes it from its last checkpoint.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from core.settings import Settings
from tests.helpers.multihost import (
    Lab,
    LabError,
    ip,
    namespace_pids,
    netns_unavailable,
    postgres_bindir,
    remove_stale_labs,
)
from tests.helpers.multihost_bot import BotHost
from tests.helpers.profile import make_test_settings, settings_env
from tests.helpers.s3 import ACCESS_KEY, REGION, SECRET_KEY
from tests.helpers.training import FAST
from tests.helpers.workers import wait_for

pytestmark = pytest.mark.slow

PG_PORT, REDIS_PORT, S3_PORT = 5432, 6379, 5000  # on the services host's own address
STEPS, EVERY = 100, 10  # enough steps that the cut lands mid-training
SAMPLES, PER_SAMPLE = 3, 2  # sample jobs, images each
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_tools() -> str | None:
    if (reason := netns_unavailable()) is not None:
        return reason
    for tool in ("redis-server", "setpriv", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if postgres_bindir() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    try:
        pwd.getpwnam("postgres")  # the throwaway cluster runs as this user, as packaged
    except KeyError:
        return "no `postgres` user to run a throwaway PostgreSQL cluster as"
    if not MOTO_SERVER.exists():
        return f"moto's server is not installed ({MOTO_SERVER})"
    return None


def cannot_run(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"the multi-host test cannot run: {reason} (CI=true: it must)")
    pytest.skip(f"the multi-host test needs network namespaces and root: {reason}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """The hosts; torn down (processes ended, namespaces and veths deleted) whatever happens."""
    reason = missing_tools()
    if reason is not None:
        cannot_run(reason)
    remove_stale_labs()
    lab = Lab(tmp_path / "logs")
    try:
        try:
            lab.build({"svc": 2, "bot": 3, "w1": 11, "w2": 12})
        except LabError as exc:  # e.g. namespaces allowed but veths or bridges not
            cannot_run(str(exc))
        yield lab
    finally:
        lab.teardown()
        assert lab.tag not in ip("netns", "list").stdout  # nothing left behind


def reaches(lab: Lab, host: str, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2).close()"
    cmd = ["ip", "netns", "exec", lab.ns(host), sys.executable, "-c", probe]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def test_lab_isolates_a_cut_host_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """The lab itself: hosts reach each other, a cut host does not, and teardown ends even
    a process that ignores SIGTERM and deletes every namespace after a failure."""
    reason = missing_tools()
    if reason is not None:
        cannot_run(reason)
    lab = Lab(tmp_path / "logs")
    env = dict(os.environ)
    with pytest.raises(RuntimeError, match="a failing test"):
        try:
            lab.build({"a": 21, "b": 22})
            b = lab.hosts["b"]
            lab.spawn("b", [sys.executable, "-m", "http.server", "--bind", b, "8000"], env=env, name="web")
            lab.spawn("a", ["sh", "-c", "trap '' TERM; sleep 600"], env=env, name="stubborn")
            wait_for(lambda: reaches(lab, "a", b, 8000), 30, interval=0.2, what="host a to reach b")
            assert not reaches(lab, "a", b, 8001)  # nothing listens there: the probe can fail
            started = namespace_pids(lab.ns("a")) + namespace_pids(lab.ns("b"))
            assert len(started) >= 2
            lab.cut("b")
            assert not reaches(lab, "a", b, 8000)
            raise RuntimeError("a failing test")
        finally:
            lab.teardown(grace=1.0)
    assert lab.tag not in ip("netns", "list").stdout
    assert not [pid for pid in started if running(pid)]


def running(pid: int) -> bool:
    """Alive, not a zombie waiting for its (re)parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lab_settings(lab: Lab, tmp_path: Path, model_dir: Path) -> Settings:
    svc = lab.hosts["svc"]
    return make_test_settings(
        tmp_path / "bot",
        database_url=f"postgresql+psycopg://postgres@{svc}:{PG_PORT}/postgres",
        broker_url=f"redis://{svc}:{REDIS_PORT}/0",
        storage_url="s3://dreambot-lab/data",
        s3_endpoint_url=f"http://{svc}:{S3_PORT}",
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        base_model=str(model_dir),
        max_concurrent_jobs=10,
        # Four worker processes share this machine's cores: a busy, healthy worker must
        # never look lost, so the lease is longer than the profile's.
        heartbeat_interval=0.5,
        lease_timeout=6.0,
    )


def host_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    env = settings_env(settings)
    env["DREAMBOT_DATA_DIR"] = str(data_dir)  # each host its own disk (caches, scratch)
    env["OMP_NUM_THREADS"] = "1"  # four torch processes on a small machine: no oversubscription
    return env


def test_jobs_run_on_worker_hosts_and_a_cut_host_hands_training_over(
    lab: Lab, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = lab_settings(lab, tmp_path, tiny_model_dir)
    svc = lab.hosts["svc"]
    lab.start_postgres("svc", PG_PORT)
    lab.start_redis("svc", REDIS_PORT)
    lab.start_moto("svc", S3_PORT, str(MOTO_SERVER))
    bot = BotHost(lab, "bot", host_env(settings, tmp_path / "bot"))
    try:
        bot.call("wait_services", services=[(svc, PG_PORT), (svc, REDIS_PORT), (svc, S3_PORT)], within=90)
    except TimeoutError:
        raise AssertionError(lab.logs()) from None
    bot.call("setup")
    for host in ("w1", "w2"):
        argv = [sys.executable, "-m", "bot.cli", "worker", "--cpu"]
        lab.spawn(host, argv, env=host_env(settings, tmp_path / host), name=host, hostname=host)
    ids = bot.call("prepare", model_dir=str(tiny_model_dir), timeout=180)
    expected = {f"{q}-cpu@{h}" for q in ("train", "sample") for h in ("w1", "w2")}
    try:
        wait_for(lambda: set(bot.call("workers")) >= expected, 180, interval=0.5, what="four workers")
    except TimeoutError:
        raise AssertionError(f"{bot.call('workers')}\n{lab.logs()}") from None

    # -- the bot host submits a training and a few drawings, and runs the sweeper ----------
    config = {**FAST, "steps": STEPS, "checkpoint_every": EVERY, "progress_interval": 0.2}
    train = bot.call(
        "submit",
        kind="train",
        params={"config": config},
        owner_id=ids["owner"],
        subject_ids=[ids["trained"]],
    )
    samples = [
        bot.call(
            "submit",
            kind="sample",
            params={"prompt": "zwx dog on the moon", "n": PER_SAMPLE, "steps": 2, "seed": 100 * k},
            owner_id=ids["owner"],
            subject_ids=[ids["drawn"]],
        )
        for k in range(1, SAMPLES + 1)
    ]
    bot.call("start_sweeper")
    checkpoints = f"subjects/{ids['trained']}/checkpoints/"

    def row(job_id: int) -> dict[str, Any]:
        return bot.call("jobs", ids=[job_id])[0]

    def past_a_checkpoint() -> dict[str, Any] | None:
        r = row(train)
        if r["status"] != "running" or (r["progress"] or {}).get("phase") != "training":
            return None
        return r if r["progress"]["step"] > EVERY and bot.call("stored", prefix=checkpoints) else None

    try:
        before_cut = wait_for(past_a_checkpoint, 300, interval=0.2, what="a training checkpoint")
    except TimeoutError:
        raise AssertionError(f"{row(train)}\n{lab.logs()}") from None
    victim_worker = before_cut["worker"]
    victim = victim_worker.split("@")[1]
    survivor = {"w1": "w2", "w2": "w1"}[victim]
    assert before_cut["attempt"] == 1 and victim_worker == f"train-cpu@{victim}"
    assert before_cut["progress"]["step"] < STEPS

    # -- pull the training host's cable --------------------------------------------------
    lab.cut(victim)

    def requeued() -> dict[str, Any] | None:
        r = row(train)
        return r if r["attempt"] >= 2 or r["status"] == "queued" else None

    try:
        wait_for(requeued, 120, interval=0.2, what="the sweeper to requeue the training")
    except TimeoutError:
        raise AssertionError(f"{row(train)}\n{lab.logs()}") from None
    # Everything the cut host sent has landed by now (its lease expired); the survivor
    # has not had time to train another EVERY steps yet.
    stored = bot.call("stored", prefix=checkpoints)
    assert len(stored) >= 1, stored
    last_checkpoint = max(int(k.rsplit("step-", 1)[1].removesuffix(".pt")) for k in stored)

    try:
        wait_for(
            lambda: all(
                r["status"] in ("succeeded", "failed", "cancelled")
                for r in bot.call("jobs", ids=[train, *samples])
            ),
            300,
            interval=0.5,
            what="every job to finish",
        )
    except TimeoutError:
        raise AssertionError(f"{bot.call('jobs', ids=[train, *samples])}\n{lab.logs()}") from None
    done = {r["id"]: r for r in bot.call("jobs", ids=[train, *samples])}
    assert [done[j]["status"] for j in [train, *samples]] == ["succeeded"] * (1 + SAMPLES), (
        [done[j]["error"] for j in done],
        lab.logs(),
    )

    # -- the training: resumed on the other host from the cut host's last checkpoint -----
    trained = done[train]
    assert trained["attempt"] == 2 and trained["worker"] == f"train-cpu@{survivor}"
    result = trained["result"]
    assert result["steps"] == STEPS
    assert result["resumed_from"] == last_checkpoint, (result["resumed_from"], stored)
    assert EVERY <= last_checkpoint < STEPS and last_checkpoint % EVERY == 0
    assert last_checkpoint >= before_cut["progress"]["step"] // EVERY * EVERY  # not an older one
    assert bot.call("stored", prefix=checkpoints) == []  # cleared once, by the one finished run
    artifact = bot.call("read", key=result["artifact_key"])  # readable on the bot host
    assert artifact["sha256"] == result["artifact_sha256"] and artifact["bytes"] > 0

    # -- the drawings: each made once, on a worker host, readable on the bot host --------
    images = bot.call("images", job_ids=samples)
    for job_id in samples:
        assert done[job_id]["worker"] in {"sample-cpu@w1", "sample-cpu@w2"}
        got = images[str(job_id)]
        assert len(got) == PER_SAMPLE and len({i["seed"] for i in got}) == PER_SAMPLE, got
        assert all(i["png"] and i["bytes"] > 0 for i in got), got
    assert bot.call("quit")


def test_a_host_cut_inside_a_transaction_does_not_keep_its_job(lab: Lab, tmp_path: Path) -> None:
    """Every heartbeat is a transaction: for a moment the worker's session holds the job's
    row lock. A host cut in that moment leaves its session idle on the database, lock held,
    and no TCP packet ever says it is gone. The database must let go of a silent host, or
    the sweeper's requeue waits on that lock forever (TCP's own keepalive takes hours)."""
    settings = lab_settings(lab, tmp_path, tmp_path).model_copy(update={"lease_timeout": 2.0})
    svc = lab.hosts["svc"]
    lab.start_postgres("svc", PG_PORT)
    lab.start_redis("svc", REDIS_PORT)
    bot = BotHost(lab, "bot", host_env(settings, tmp_path / "bot"))
    try:
        bot.call("wait_services", services=[(svc, PG_PORT), (svc, REDIS_PORT)], within=90)
    except TimeoutError:
        raise AssertionError(lab.logs()) from None
    bot.call("setup", bucket=False)
    worker = BotHost(lab, "w1", host_env(settings, tmp_path / "w1"), name="w1")
    job = bot.call("submit", kind="sample", params={"prompt": "a cat"})
    assert worker.call("claim", job_id=job, worker="sample-cpu@w1") == 1
    assert worker.call("hold_row", job_id=job)

    lab.cut("w1")
    bot.call("start_sweeper")

    def requeued() -> dict[str, Any] | None:
        r = bot.call("jobs", ids=[job])[0]
        return r if r["status"] == "queued" else None

    try:
        row = wait_for(requeued, 90, interval=0.5, what="the sweeper to requeue the cut host's job")
    except TimeoutError:
        raise AssertionError(f"{bot.call('jobs', ids=[job])}\n{lab.logs()}") from None
    assert row["attempt"] == 1 and row["worker"] is None
    assert bot.call("quit")
