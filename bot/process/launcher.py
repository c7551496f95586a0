"""Which worker processes to run: `dreambot up` and `dreambot worker --gpus`.

`dreambot up` runs one `train` and one `sample` worker (`up_workers`). `dreambot worker --gpus all|0,1` runs one Celery worker process per GPU *and* queue
(`train-gpu0@host`, `sample-gpu0@host`, …): training and sampling never share a process,
so a long training never blocks sampling, and each process sees exactly one GPU through
`CUDA_VISIBLE_DEVICES`. GPUs are found with `nvidia-smi` (or torch in a subprocess, so
this process never initialises CUDA). `bot.process.supervisor` runs what is planned here.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bot.process.supervisor import LaunchError, WorkerSpec

log = logging.getLogger(__name__)

QUEUES = ("train", "sample")
DISCOVERY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Gpu:
    index: str  # nvidia-smi's index: the name the operator sees (train-gpu0)
    uuid: str = ""  # what the child gets in CUDA_VISIBLE_DEVICES when known (order-proof)
    name: str = "GPU"

    @property
    def visible_as(self) -> str:
        return self.uuid or self.index


# -- discovery and planning -----------------------------------------------------------------


def discover_gpus(env: dict[str, str] | None = None) -> list[Gpu]:
    """The GPUs this host's workers may use. A `CUDA_VISIBLE_DEVICES` already set (by
    systemd, a container runtime) limits them; empty or -1 means none."""
    env = dict(os.environ if env is None else env)
    found = _nvidia_smi(env)
    if found is None:
        found = _torch_count(env)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not wanted or wanted[0] == "-1":
        return []
    by_id = {g.index: g for g in found} | {g.uuid: g for g in found if g.uuid}
    return [by_id.get(w, Gpu(index=w)) for w in wanted]


def _nvidia_smi(env: dict[str, str]) -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=DISCOVERY_TIMEOUT,
            env=env,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s); asking torch instead", exc)
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(index=parts[0], uuid=parts[1], name=parts[2]))
    return gpus


def _torch_count(env: dict[str, str]) -> list[Gpu]:
    # A subprocess: CUDA initialised here would be inherited, broken, by forked children.
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=DISCOVERY_TIMEOUT, env=env
        )
        count = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        count = 0
    return [Gpu(index=str(i)) for i in range(count)]


def select_gpus(spec: str, found: Sequence[Gpu]) -> list[Gpu]:
    """`all` or a comma-separated list of indices, checked against what is there."""
    if spec.strip().lower() == "all":
        return list(found)
    by_index = {g.index: g for g in found}
    wanted = list(dict.fromkeys(item.strip() for item in spec.split(",") if item.strip()))
    missing = [w for w in wanted if w not in by_index]
    if missing or not wanted:
        have = ", ".join(sorted(by_index)) or "none"
        raise LaunchError(f"--gpus {spec}: no GPU {', '.join(missing) or spec} here (this host has: {have})")
    return [by_index[w] for w in wanted]


def plan_workers(
    gpus: Sequence[Gpu], queues: Sequence[str] = QUEUES, host: str | None = None
) -> list[WorkerSpec]:
    """One process per GPU and queue; with no GPUs, one CPU process per queue."""
    host = host or socket.gethostname()
    if not gpus:
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU worker stays a CPU worker.
        return [WorkerSpec(f"{q}-cpu@{host}", q, {"CUDA_VISIBLE_DEVICES": ""}) for q in queues]
    return [
        WorkerSpec(
            f"{q}-gpu{gpu.index}@{host}",
            q,
            # PCI order makes CUDA's numbering agree with nvidia-smi's (when given an index).
            {"CUDA_VISIBLE_DEVICES": gpu.visible_as, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        )
        for gpu in gpus
        for q in queues
    ]


def up_workers(host: str | None = None) -> list[WorkerSpec]:
    """`dreambot up`'s pair: `train@host` and `sample@host`, on whatever device they find."""
    host = host or socket.gethostname()
    return [WorkerSpec(f"{q}@{host}", q, {}) for q in QUEUES]
