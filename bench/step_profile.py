"""Where a training step and a sampling step spend their time: torch.profiler tables.

    python bench/step_profile.py --model /tmp/sd15 --what train     # GPU: SD-1.5 architecture, 512 px
    python bench/step_profile.py --tiny --what train,sample         # CPU smoke check

A benchmark gives the ratio; this says why, in the same device call: the top operators by
device time, the device-busy share of each step (low means the host's launches are the limit,
where CUDA graphs or compile help; high means kernels are, where fusion and layouts help).
Training: our Trainer (LoRA, bf16 on CUDA, one instance + one class image). Sampling: the
resident pipeline on its default path (on a GPU: compiled, one CUDA graph per step) with a
person's LoRA merged, batch 4, DPM++ 2M Karras, CFG 7.5.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

CUDA = torch.cuda.is_available()


def measure(name: str, step: Callable[[], None], warmup: int, steps: int) -> None:
    for _ in range(warmup):
        step()
    if CUDA:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if CUDA:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    sort = "self_device_time_total" if CUDA else "self_cpu_time_total"
    print(f"\n=== {name}: {wall * 1000:.1f} ms per iteration (wall, with the profiler on)")
    if CUDA:
        busy = sum(e.self_device_time_total for e in events) / 1e3 / steps  # µs -> ms
        print(f"device busy {busy:.1f} ms per iteration = {100 * busy / (wall * 1000):.0f}% of the wall time")
    print(events.table(sort_by=sort, row_limit=22, max_name_column_width=60))


def train_step(model: str, res: int) -> Callable[[], None]:
    from PIL import Image

    from core.train_config import build_config
    from gpu_worker.training.models import load_components
    from gpu_worker.training.trainer import Trainer
    from tests.helpers.training import photo_bytes

    photos = [Image.open(io.BytesIO(photo_bytes(i, (res + 32, res + 32)))).convert("RGB") for i in range(4)]
    comps = load_components(model)
    overrides = dict(
        steps=10**6, resolution=res, lr_warmup_steps=0, progress_interval=10**6, preview_interval=0
    )
    cfg = build_config(overrides=overrides).resolved(n_photos=4, resolution=comps.native_resolution)
    trainer = Trainer(cfg, comps, photos[:3], photos[3:], "a photo of sks dog", "a photo of dog")

    def step() -> None:
        trainer.train_step()
        trainer.step += 1

    return step


def sample_step(model: str, res: int, steps: int, tmp: Path, args: argparse.Namespace) -> Callable[[], None]:
    """A sampling job's call on the default path: warmed at batch 4 (compiled and captured
    on a GPU), reading the compile store at `--store` when given (bench/sample.py's)."""
    from core.sample_request import SampleRequest
    from core.settings import load_settings
    from gpu_worker import fast_path
    from gpu_worker.lora_cache import AdapterRef
    from gpu_worker.pipelines import generate, get_resident, warm
    from tests.helpers.lora import make_lora_bytes

    flags: dict[str, object] = {"sample_warm": "4", "sample_warm_later": ""}
    if args.store:
        flags["storage_url"] = args.store
    if args.compile:
        flags["sample_compile"] = args.compile
    if args.backend:
        fast_path.COMPILE_OPTIONS["backend"] = args.backend
    settings = load_settings(_env_file=None, base_model=model, data_dir=tmp, nsfw_filter=False, **flags)
    lora = tmp / "lora.safetensors"
    lora.write_bytes(make_lora_bytes(Path(model), seed=1, scale=0.01))
    resident = get_resident(settings)
    start = time.perf_counter()
    warmed = warm(resident, settings, lambda doing: None)
    print(f"warm-up {time.perf_counter() - start:.1f}s: {warmed}")
    resident.use_adapters([AdapterRef("person", lora)], settings)
    req = SampleRequest(prompt="a photo of sks dog", n=4, steps=steps, width=res, height=res, seed=0)

    def call() -> None:
        with resident.lock:
            generate(resident, settings, req, req.prompt, req.seeds(0), None)

    return call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    ap.add_argument("--what", default="train,sample")
    ap.add_argument("--res", type=int, default=None, help="default 512 (64 with --tiny)")
    ap.add_argument("--store", default="", help="sampling: the storage folder holding the compile cache")
    ap.add_argument("--compile", default="", help="sampling: DREAMBOT_SAMPLE_COMPILE (default auto)")
    ap.add_argument("--backend", default="", help="sampling: torch.compile backend (default inductor)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = args.model
        if args.tiny or not model:
            from tests.helpers.tiny_model import build_tiny_pipeline

            model = str(build_tiny_pipeline(tmp / "tiny-sd"))
        res = args.res or (512 if args.model else 64)
        print(f"profile {model} at {res}px on {torch.cuda.get_device_name() if CUDA else 'cpu'}")
        if "train" in args.what:
            measure("LoRA training step (1 instance + 1 class image)", train_step(model, res), 5, 5)
        if "sample" in args.what:
            step = sample_step(model, res, 10, tmp, args)
            measure("sampling, batch 4, 10 steps, default path (per call)", step, 1, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
