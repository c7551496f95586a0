"""Chat acknowledgement benchmark: how fast /train is acknowledged on Discord and Slack.

    python bench/ack.py                      # 20 runs each, 5 photos of 12 MP (~2–4 MB), slow CDN
    python bench/ack.py --runs 5 --out ack.json --cdn-mib-s 2

The real adapters (discord.py, slack-bolt in Socket Mode) run in this process against the
local fakes the tests use (tests/helpers/fake_discord.py, tests/helpers/fake_slack.py), with a
migrated SQLite database in a temporary folder and delivery running at its default interval.
The photos are served slowly (`--cdn-mib-s` per download), as a real CDN serves large files,
so waiting for them before acknowledging would miss the platforms' 3-second budget.

Measured per run, from the moment the fake sends the event (Discord: its INTERACTION_CREATE
log entry, made just before the frame is queued for the gateway socket; Slack: just before
`send_envelope`):
- Discord `/train` with 5 photo attachments: until the fake receives the interaction callback
  (type 5, "thinking…"), and until the job row is committed;
- Slack `/train` slash command: until the ack arrives on the websocket, and until views.open;
- Slack `/train` modal submission with 5 files: until the ack, and until the job row is committed.
Times are read from the fakes' own records (stamped as each request or socket frame arrives)
and from a SQLAlchemy commit hook, never by polling. The first `--warmup` runs are not counted. The fakes share this process (and the GIL) with the
bot, so the numbers are, if anything, pessimistic. Prints a table; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ack_probes import BenchDiscord, BenchSlack, JobClock, photo  # noqa: E402
from bot.chat.delivery import Delivery  # noqa: E402
from core import migrate  # noqa: E402
from core.db import dispose_engines  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from tests.bot.platforms.slack_harness import SlackBot, slack_settings  # noqa: E402
from tests.helpers.discord_bot import discord_settings, running_bot  # noqa: E402
from tests.helpers.fake_slack_payloads import slash_command, view_submission  # noqa: E402

CHANNEL = "C0GENERAL"
WAIT = 120.0  # seconds one run may take before the benchmark gives up on it


async def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    """Wait for the end of a run (the measurements come from stamps, not from this loop)."""
    deadline = time.monotonic() + WAIT
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)
    return value


def one_job(clock: JobClock, known: set[int]) -> tuple[int, float] | None:
    new = clock.new_since(known)
    return (new[0], clock.committed[new[0]]) if new else None


def job_or_refusal(
    clock: JobClock, known: set[int], answer: Callable[[], str | None]
) -> tuple[int, float] | None:
    """The new job, or an error at once when the bot answered without creating one (the
    photo coach asking, a refusal): the job row is committed before the answer is sent."""
    if job := one_job(clock, known):
        return job
    if (text := answer()) is not None:
        raise RuntimeError(f"no job was created; the bot answered: {text!r}")
    return None


@contextlib.asynccontextmanager
async def delivering(settings: Settings, platform_name: str, poster: Any) -> AsyncIterator[None]:
    """Delivery at its default interval, as `dreambot up` runs it next to the adapters."""
    stop = asyncio.Event()
    task = asyncio.create_task(Delivery(settings, {platform_name: poster}).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# -- the runs -----------------------------------------------------------------------------------


async def discord_run(
    fake: BenchDiscord, clock: JobClock, attachments: list[dict[str, Any]], i: int
) -> dict[str, Any]:
    known = set(clock.committed)
    options = {f"photo{k + 1}": a for k, a in enumerate(attachments)}
    inter = fake.slash("train", {"name": "Rex", "class": "dog", **options}, fake.new_user(f"u{i}"))
    token = inter["token"]

    def answer() -> str | None:  # the placeholder edited, or a private follow-up sent
        sent = [r for r in fake.rest(None, f"/{token}(/messages|$)") if r.method in ("PATCH", "POST")]
        return str((sent[-1].json or {}).get("content")) if sent else None

    job_id, t_job = await wait_for(lambda: job_or_refusal(clock, known, answer), "the job row")
    await wait_for(lambda: fake.rest("PATCH", f"/{token}/messages/@original"), "the answer")
    sent = next(d for d in fake.dispatched("INTERACTION_CREATE") if d.data["id"] == inter["id"])
    calls = [r for r in fake.rest() if r.seq > sent.seq]
    ack = next(r for r in calls if r.path.endswith(f"/{token}/callback"))
    t0, t_ack = fake.log.at[sent.seq], fake.log.at[ack.seq]
    downloads = [t for _, t in fake.cdn.requests if t > t0]
    return {
        "ack_s": t_ack - t0,
        "job_created_s": t_job - t0,
        "job_id": job_id,
        "ack_type": ack.json["type"],
        "ack_first_call": calls[0] is ack,
        "downloads": len(downloads),
        "downloads_after_ack": all(t > t_ack for t in downloads),
    }


async def bench_discord(base: Settings, photos: list[bytes], runs: int, rate: float) -> list[dict[str, Any]]:
    fake = BenchDiscord(rate).start()
    try:
        settings = discord_settings(base, fake)
        attachments = [fake.upload(f"photo{k}.jpg", p, "image/jpeg") for k, p in enumerate(photos)]
        with JobClock() as clock:
            async with (
                running_bot(settings, fake, delivery=False) as bot,
                delivering(settings, "discord", bot.adapter.poster),
            ):
                return [await discord_run(fake, clock, attachments, i) for i in range(runs)]
    finally:
        fake.stop()


async def slack_run(fake: BenchSlack, clock: JobClock, files: list[dict[str, Any]], i: int) -> dict[str, Any]:
    user, cmd_trigger = f"U0BENCH{i:04d}", f"tc{i}"
    views, posts = len(fake.views), len(fake.methods("chat.postMessage"))
    command = slash_command(fake, "/train", "Rex", user=user, channel=CHANNEL, trigger_id=cmd_trigger)
    t_cmd = time.perf_counter()
    cmd_env = await fake.send_envelope("slash_commands", command)
    await wait_for(lambda: len(fake.views) > views, "the modal")
    values = {
        "photos": {"photos": {"type": "file_input", "files": files}},
        "name": {"name": {"type": "plain_text_input", "value": "Rex"}},
        "class_noun": {"class_noun": {"type": "plain_text_input", "value": "dog"}},
    }
    known = set(clock.committed)
    submit = view_submission(fake.views[-1], values, user=user, trigger_id=f"ts{i}")
    t_sub = time.perf_counter()
    sub_env = await fake.send_envelope("interactive", submit)
    job_id, t_job = await wait_for(lambda: one_job(clock, known), "the job row")
    await wait_for(lambda: len(fake.methods("chat.postMessage")) >= posts + 2, "the headline and answer")
    t_cmd_ack = fake.stamp(lambda c: c.args.get("envelope_id") == cmd_env)
    t_sub_ack = fake.stamp(lambda c: c.args.get("envelope_id") == sub_env)
    t_modal = fake.stamp(lambda c: c.method == "views.open" and c.args.get("trigger_id") == cmd_trigger)
    assert t_cmd_ack and t_sub_ack and t_modal, "an ack or views.open was not recorded"
    downloads = fake.stamps("download", after=t_sub)
    return {
        "command_ack_s": t_cmd_ack - t_cmd,
        "modal_opened_s": t_modal - t_cmd,
        "submission_ack_s": t_sub_ack - t_sub,
        "job_created_s": t_job - t_sub,
        "job_id": job_id,
        "downloads": len(downloads),
        "downloads_after_ack": all(t > t_sub_ack for t in downloads),
    }


async def bench_slack(base: Settings, photos: list[bytes], runs: int, rate: float) -> list[dict[str, Any]]:
    fake = BenchSlack().start()
    fake.rate = rate
    try:
        settings = slack_settings(base, fake)
        files = [fake.add_user_file(f"photo{k}.jpg", p) for k, p in enumerate(photos)]
        with JobClock() as clock:
            async with SlackBot(settings, fake) as bot, delivering(settings, "slack", bot.adapter.poster):
                return [await slack_run(fake, clock, files, i) for i in range(runs)]
    finally:
        fake.stop()


# -- statistics and output ------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    """Median, p95 (nearest rank: the ⌈0.95·n⌉-th smallest) and max, in seconds."""
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "median_s": statistics.median(ordered),
        "p95_s": p95,
        "max_s": ordered[-1],
        "runs_s": [round(v, 6) for v in values],
    }


MEASURES = {  # (case, measure): (label, key in a run)
    ("discord_train", "ack"): ("Discord /train, 5 photos — defer (type 5)", "ack_s"),
    ("discord_train", "job_created"): ("Discord /train, 5 photos — job row committed", "job_created_s"),
    ("slack_train_command", "ack"): ("Slack /train command — ack", "command_ack_s"),
    ("slack_train_command", "modal_opened"): ("Slack /train command — views.open", "modal_opened_s"),
    ("slack_train_submission", "ack"): ("Slack /train modal, 5 photos — ack", "submission_ack_s"),
    ("slack_train_submission", "job_created"): (
        "Slack /train modal, 5 photos — job row committed",
        "job_created_s",
    ),
}


def report(discord_runs: list[dict[str, Any]], slack_runs: list[dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for (case, measure), (_, key) in MEASURES.items():
        runs = discord_runs if case.startswith("discord") else slack_runs
        if runs:
            results.setdefault(case, {})[measure] = summary([r[key] for r in runs])
    if discord_runs:
        results["discord_train"]["order"] = {
            "defer_first_call": all(r["ack_first_call"] and r["ack_type"] == 5 for r in discord_runs),
            "downloads_after_defer": all(r["downloads_after_ack"] for r in discord_runs),
            "downloads_per_run": sorted({r["downloads"] for r in discord_runs}),
        }
    if slack_runs:
        results["slack_train_submission"]["order"] = {
            "downloads_after_ack": all(r["downloads_after_ack"] for r in slack_runs),
            "downloads_per_run": sorted({r["downloads"] for r in slack_runs}),
        }
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'measure':<52} {'median':>9} {'p95':>9} {'max':>9}   (ms)")
    for (case, measure), (label, _) in MEASURES.items():
        s = results.get(case, {}).get(measure)
        if s:
            print(f"{label:<52} {s['median_s'] * 1e3:9.1f} {s['p95_s'] * 1e3:9.1f} {s['max_s'] * 1e3:9.1f}")
    for case in ("discord_train", "slack_train_submission"):
        if case in results:
            print(f"{case} order: {results[case]['order']}")


def machine() -> dict[str, Any]:
    packages = ("discord.py", "slack-bolt", "slack-sdk", "aiohttp", "sqlalchemy")
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in packages},
    }


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    width, height = (int(v) for v in args.photo_px.split("x"))
    photos = [photo(k, width, height, noise) for k, noise in enumerate((12, 13, 14, 15, 16))]
    settings = load_settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'dreambot.db'}",
        queue_prefix=f"ack{uuid.uuid4().hex[:6]}-",
    )
    migrate.upgrade(settings)
    rate = args.cdn_mib_s * 2**20
    runs = args.runs + args.warmup
    try:
        discord_runs = (
            await bench_discord(settings, photos, runs, rate) if "discord" in args.platforms else []
        )
        slack_runs = await bench_slack(settings, photos, runs, rate) if "slack" in args.platforms else []
    finally:
        dispose_engines()
    return {
        "benchmark": "chat acknowledgements",
        "runs": args.runs,
        "warmup": args.warmup,
        "photos": {"count": len(photos), "px": args.photo_px, "bytes": [len(p) for p in photos]},
        "cdn_mib_per_s": args.cdn_mib_s,
        "database": "sqlite",
        "machine": machine(),
        "results": report(discord_runs[args.warmup :], slack_runs[args.warmup :]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs per platform")
    parser.add_argument("--warmup", type=int, default=1, help="runs before those, not counted")
    parser.add_argument("--photo-px", default="4032x3024", help="photo size WxH (12 MP: ~2–4 MB JPEGs)")
    parser.add_argument(
        "--cdn-mib-s", type=float, default=4.0, help="download speed per file, MiB/s (0: unthrottled)"
    )
    parser.add_argument("--platforms", nargs="+", default=["discord", "slack"], choices=["discord", "slack"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be ≥ 1 and --warmup ≥ 0")
    with tempfile.TemporaryDirectory(prefix="dreambot-ack-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print_table(result["results"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
