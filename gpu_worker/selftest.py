"""The worker's self-test: what this worker can see (Python, torch, GPUs, disk).

Shown by `dreambot doctor`. With `params.sleep` it runs that long, reporting progress,
which tests use to kill a worker mid-job.
"""

from __future__ import annotations

import platform
import shutil
import socket
import time
from typing import Any

from core.job_progress import JobPhase, JobProgress
from core.job_results import SelftestResult
from gpu_worker.runtime import JobContext


def describe_machine(data_dir: str, probe_gpus: bool = True) -> dict[str, Any]:
    """Host, Python, disk, torch and (with `probe_gpus`, which initialises CUDA) the GPUs."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "free_disk_gb": round(shutil.disk_usage(data_dir).free / 1e9, 1),
    }
    try:
        import torch
    except ImportError:
        info.update(torch=None, cuda_devices=[])
        return info
    if not probe_gpus:
        info.update(torch=torch.__version__, cuda=torch.version.cuda)
        return info
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            devices.append(
                {
                    "index": i,
                    "name": props.name,
                    "total_gb": round(total / 1e9, 1),
                    "free_gb": round(free / 1e9, 1),
                }
            )
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_devices=devices)
    return info


def run(ctx: JobContext) -> SelftestResult:
    sleep = float(ctx.params.get("sleep", 0))
    steps = max(1, int(sleep / 0.25)) if sleep else 1
    for step in range(steps):
        ctx.progress(JobProgress(phase=JobPhase.SELFTEST, step=step + 1, total=steps))
        if sleep:
            time.sleep(sleep / steps)
    ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SelftestResult.model_validate(
        {
            "worker": ctx.lease.worker,
            "attempt": ctx.lease.attempt,
            **describe_machine(str(ctx.settings.data_dir)),
        }
    )
