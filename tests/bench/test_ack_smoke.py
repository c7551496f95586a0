"""bench/ack.py runs end to end (one small run per platform) and writes the JSON it promises.

Only the plumbing and the recorded order are checked here; the timings are for
docs/benchmarks.md, never asserted.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ack", ROOT / "bench" / "ack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_run_per_platform_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "ack.json"
    load_bench().main(
        ["--runs", "1", "--warmup", "0", "--photo-px", "640x480", "--cdn-mib-s", "0", "--out", str(out)]
    )

    data = json.loads(out.read_text())
    assert data["runs"] == 1 and data["database"] == "sqlite"
    assert data["photos"]["count"] == 5 and len(data["photos"]["bytes"]) == 5
    assert {"cpus", "python", "packages"} <= data["machine"].keys()
    expected = {
        "discord_train": {"ack", "job_created"},
        "slack_train_command": {"ack", "modal_opened"},
        "slack_train_submission": {"ack", "job_created"},
    }
    results = data["results"]
    for case, measures in expected.items():
        for measure in measures:
            stats = results[case][measure]
            assert {"median_s", "p95_s", "max_s", "runs_s"} <= stats.keys()
            assert len(stats["runs_s"]) == 1 and stats["median_s"] == stats["p95_s"] == stats["max_s"] > 0
    # The acknowledgement comes before the job exists, and before any photo is fetched.
    for case in ("discord_train", "slack_train_submission"):
        assert results[case]["ack"]["max_s"] < results[case]["job_created"]["median_s"]
    assert results["discord_train"]["order"] == {
        "defer_first_call": True,
        "downloads_after_defer": True,
        "downloads_per_run": [5],
    }
    assert results["slack_train_submission"]["order"] == {
        "downloads_after_ack": True,
        "downloads_per_run": [5],
    }
