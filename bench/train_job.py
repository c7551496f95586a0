"""A training worker as a person meets it: warm at start, then jobs through the real job path.

    python bench/train_job.py --tiny                                   # CPU smoke check
    python bench/train_job.py --model /tmp/sd15 --out /tmp/job.json    # GPU, SD-1.5 architecture

In one process, as `dreambot worker --queues train` runs: the worker's warm-up
(`gpu_worker.warmup.warm_worker`: base model, class-image kernels, the training step
compiled and captured, the compile store loaded before and saved after), then:

- class images: 24 "a photo of dog" drawn with the warm worker's modules, seconds per image
  counting the first batch (the reference draws the same 24 in `bench/train.py`);
- job 1: a cat with 200 class images to draw first, then an 800-step LoRA;
- job 2: another cat, its 200 class images now cached, an 800-step LoRA;
each submitted with `core.jobs.submit` and run by `gpu_worker.runtime.run_job` with the
`gpu_worker.training.job.run` body, exactly what a Celery task does; the time is counted
from the claim to the finished job, and to the stored model (before its test pictures);
- a profile of the training step as the jobs ran it (compiled, one CUDA graph): wall time
  per step, device-busy share, the top kernels.
Results go to JSON after every item (a device call cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

STARTED = time.monotonic()
CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class Results:
    def __init__(self, path: str | None) -> None:
        self.path, self.data = path, {"items": {}}

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.data["items"][name] = value
        print(f"[train_job] {name}: {json.dumps(value, default=str)}", flush=True)
        if self.path:
            Path(self.path).write_text(json.dumps(self.data, indent=2, default=str))


def make_settings(work: Path, model: str, tiny: bool) -> Any:
    from core import migrate
    from core.settings import load_settings

    config = work / "train.yaml"
    config.write_text(
        "validation_images: 4\n" if not tiny else "validation_images: 1\nclass_sample_steps: 2\n"
    )
    settings = load_settings(
        _env_file=None, data_dir=work / "var", base_model=model, train_config=str(config),
        nsfw_filter=False, queue_prefix="bench-",
    )  # fmt: skip
    migrate.upgrade(settings)
    return settings


def subject(settings: Any, model: str, name: str, noun: str, seed: int) -> int:
    from tests.helpers.training import make_trained_subject_row

    return make_trained_subject_row(
        settings, Path(model), name=name, token="sks", class_noun=noun, n_photos=5, photo_seed=seed, user=name
    )


def run_training_job(settings: Any, sid: int, steps: int, n_class: int) -> dict[str, Any]:
    from core import jobs
    from gpu_worker.runtime import run_job
    from gpu_worker.training import job as training_job

    params = {"subject_id": sid, "config": {"steps": steps, "num_class_images": n_class}}
    job = jobs.submit(settings, kind="train", params=params, subject_ids=[sid])
    stored: dict[str, float] = {}

    def body(ctx: Any) -> dict[str, Any]:
        report = ctx.progress

        def progress(**values: Any) -> None:  # when the model is stored, test pictures start
            if values.get("phase") == "validating" and "stored_s" not in stored:
                sync()
                stored["stored_s"] = time.monotonic() - start
            report(**values)

        ctx.progress = progress
        return training_job.run(ctx)

    sync()
    start = time.monotonic()
    state = run_job(settings, job.id, "bench@gpu", body)
    sync()
    wall = time.monotonic() - start
    done = jobs.get_job(settings, job.id)
    result = dict(done.result or {})
    return {
        "state": state, "claim_to_done_s": round(wall, 2), "claim_to_stored_model_s": stored.get("stored_s"),
        "error": done.error, "steps": result.get("steps"), "steps_per_s": result.get("steps_per_s"),
        "class_images_generated": result.get("class_images_generated"), "precision": result.get("precision"),
    }  # fmt: skip


def class_images_item(settings: Any, model: str, n: int) -> dict[str, Any]:
    from core.storage import storage_from_settings
    from core.train_config import build_config
    from gpu_worker.training import resident
    from gpu_worker.training.class_images import ensure_class_images
    from gpu_worker.training.prepare import Shape

    comps = resident.components(settings, model, Shape.planned(build_config()))
    stamps: list[tuple[int, float]] = []
    sync()
    t0 = time.monotonic()
    got = ensure_class_images(
        storage_from_settings(settings), base_model=model, prompt="a photo of dog", resolution=comps.native_resolution,
        count=n, comps=comps, progress=lambda done, total: stamps.append((done, time.monotonic() - t0)),
    )  # fmt: skip
    sync()
    seconds = time.monotonic() - t0
    return {"generated": got.generated, "seconds": round(seconds, 3), "s_per_image": round(seconds / n, 4),
            "batches": stamps}  # fmt: skip


def profile_item(settings: Any, model: str) -> dict[str, Any]:
    """The LoRA step as a job runs it, on the kept (warm) model: wall per step, then a profile."""
    from torch.profiler import ProfilerActivity, profile

    from core.train_config import build_config
    from gpu_worker.training import resident
    from gpu_worker.training.prepare import Shape
    from gpu_worker.training.trainer import Trainer
    from gpu_worker.training.warm import _made_up

    cfg = build_config(deployment_file=settings.train_config)
    comps = resident.components(settings, model, Shape.planned(cfg))
    cfg = cfg.resolved(n_photos=4, resolution=comps.native_resolution).model_copy(update={"steps": 10**6})
    size = comps.native_resolution
    if CUDA:  # the training's own peak (the kept model included), to set against the reference's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = Trainer(
        cfg, comps, _made_up(4, size, 1), _made_up(4, size, 2), "a photo of sks dog", "a photo of dog"
    )

    def steps(n: int) -> None:
        for _ in range(n):
            t.train_step()
            t.step += 1

    steps(10)  # capture, warm
    sync()
    t0 = time.monotonic()
    steps(50)
    sync()
    wall_ms = (time.monotonic() - t0) / 50 * 1000
    out: dict[str, Any] = {"wall_ms_per_step": round(wall_ms, 2), "cuda_graph": t.runner.graph is not None,
                           "compiled": t.runner.unet is not t.unet_p}  # fmt: skip
    if CUDA:
        out["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            steps(10)
            sync()
        events = prof.key_averages()
        busy_ms = sum(e.self_device_time_total for e in events) / 1e3 / 10
        out.update(device_busy_ms=round(busy_ms, 2), device_busy_share=round(busy_ms / wall_ms, 3))
        print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    t.release_optimizer()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tiny", action="store_true", help="build and use the tiny test model (CPU)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per job (default 800; 4 with --tiny)")
    ap.add_argument("--class-images", type=int, default=None, help="per job (default 200; 4 with --tiny)")
    ap.add_argument("--skip", default="", help="comma-separated items to leave out (profile, job2, …)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-job-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.tiny or not model:
        from tests.helpers.tiny_model import build_tiny_pipeline

        model = str(build_tiny_pipeline(work / "tiny-sd"))
    tiny = not args.model
    steps, n_class = args.steps or (4 if tiny else 800), args.class_images or (4 if tiny else 200)
    skip = set(args.skip.split(","))
    results = Results(args.out)
    settings = make_settings(work, model, tiny)
    device = torch.cuda.get_device_name() if CUDA else "cpu"
    results.put("host", {"device": device, "torch": torch.__version__, "process_start_to_settings_s":
                         round(time.monotonic() - STARTED, 2)})  # fmt: skip

    from gpu_worker.warmup import warm_worker

    sync()
    t0 = time.monotonic()
    details = warm_worker(settings, "bench@gpu", [settings.queue_name("train")])
    results.put("warm_up", {"seconds": round(time.monotonic() - t0, 2), **details})
    if "classes" not in skip:
        results.put("class_images_24", class_images_item(settings, model, 6 if tiny else 24))
    results.put("job1_draws_class_images", run_training_job(settings, subject(settings, model, "tom", "cat", 10),
                                                            steps, n_class))  # fmt: skip
    if "job2" not in skip:
        results.put("job2_cached_class_images", run_training_job(settings, subject(settings, model, "kit", "cat", 20),
                                                                 steps, n_class))  # fmt: skip
    if "profile" not in skip:
        results.put("profile_lora_step", profile_item(settings, model))
    print(f"[train_job] done in {time.monotonic() - STARTED:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
