"""The measurements of `bench/sample.py`, each run in a process of its own.

    python bench/sample_items.py ITEM --model DIR --work DIR --out FILE.json [--res --steps …]

ITEM is `plain` (a StableDiffusionPipeline that loads and unloads the LoRA per request),
`cold` (our worker's path with an empty compile store: start, warm-up, first picture,
vary/upscale first calls, then waits for the background builds so the store is complete),
`warm` (a restart with the store `cold` filled and an empty local torch cache, as on a new
host: first picture, first calls, then the steady-state figures) or `eager` (our path with
compile off: the eager baseline of the first calls and the steady state). Settings are the
defaults unless flags say otherwise. The JSON file is rewritten after every measurement,
so a process cut off by its timeout keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = float(os.environ.get("BENCH_T0") or time.time())  # when the parent started this process
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PROMPT = "a photo of zwx dog on the moon"
CUDA = torch.cuda.is_available()


class Record:
    """The item's results, written to disk after every measurement."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"[{time.time() - T0:6.1f}s] {key}: {json.dumps(value, default=str)[:160]}", flush=True)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_of(fn: Callable[[], Any], runs: int) -> dict[str, Any]:
    times = [timed(fn) for _ in range(runs)]
    return {"median_s": statistics.median(times), "runs_s": [round(t, 4) for t in times]}


def plain(args: argparse.Namespace, rec: Record) -> None:
    from diffusers import StableDiffusionPipeline

    from gpu_worker.pipelines import make_scheduler, pick_device

    device, dtype = pick_device()
    lora_dir = args.work / "plain-lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "pytorch_lora_weights.safetensors").write_bytes(loras(args)[0])
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = make_scheduler("dpmpp_2m_karras", pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    rec["load_s"] = round(time.perf_counter() - start, 3)

    def request(batch: int, lora: bool = True) -> None:
        if lora:
            pipe.load_lora_weights(str(lora_dir), weight_name="pytorch_lora_weights.safetensors")
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        pipe(PROMPT, num_images_per_prompt=batch, height=args.res, width=args.res, num_inference_steps=args.steps,
             guidance_scale=7.5, generator=gens)  # fmt: skip
        if lora:
            pipe.unload_lora_weights()

    rec["first_picture_s"] = round(timed(lambda: request(1)), 3)
    for batch, n in ((1, args.n1), (4, args.n4)):
        rec[f"b{batch}_lora"] = median_of(lambda b=batch: request(b), n)
    rec["b1_no_lora"] = median_of(lambda: request(1, lora=False), args.n1)


def loras(args: argparse.Namespace) -> list[bytes]:
    from tests.helpers.lora import make_lora_bytes

    return [make_lora_bytes(Path(args.model), seed=s, scale=0.01) for s in (1, 2, 3)]


def settings_for(args: argparse.Namespace, item: str) -> Any:
    from core.settings import load_settings

    flags: dict[str, Any] = {}
    if item == "eager":
        flags["sample_compile"] = "off"
    elif args.compile:
        flags["sample_compile"] = args.compile
    # One storage for every item: `cold` fills the compile cache that `warm` reads.
    return load_settings(_env_file=None, base_model=args.model, data_dir=args.work / item, nsfw_filter=False,
                         storage_url=str(args.work / "storage"), **flags)  # fmt: skip


def ours(args: argparse.Namespace, item: str, rec: Record) -> None:
    """Our worker's path: load, warm (as before the first claim), first picture, first calls."""
    from core.sample_request import SampleRequest
    from core.storage import storage_from_settings
    from gpu_worker import fast_path, pipelines
    from gpu_worker.lora_cache import AdapterRef, adapter_name

    if args.backend:
        fast_path.COMPILE_OPTIONS["backend"] = args.backend
    settings = settings_for(args, item)
    storage = storage_from_settings(settings)
    refs = []
    for i, data in enumerate(loras(args)):
        sha = storage.put(f"subjects/{i}/lora.safetensors", data)
        path = pipelines.disk_cache(settings).get(f"subjects/{i}/lora.safetensors", sha)
        refs.append(AdapterRef(adapter_name(i, sha), path))
    rec["process_start_to_import_s"] = round(time.time() - T0, 2)
    resident = pipelines.get_resident(settings)
    sync()
    rec["loaded_s"] = round(time.time() - T0, 2)
    steps: list[tuple[float, str]] = []

    def report(doing: str) -> None:  # recorded as it goes: a warm-up cut off still says how far it got
        steps.append((round(time.time() - T0, 2), doing))
        rec["warm_steps"] = steps

    rec["warmup"] = pipelines.warm(resident, settings, report)
    rec["ready_s"] = round(time.time() - T0, 2)

    def draw(n: int, ref: AdapterRef | None, source: Any = None, **extra: Any) -> Any:
        req = SampleRequest(prompt=PROMPT, n=n, steps=args.steps, seed=0, **extra)
        with resident.lock:
            resident.use_adapters([ref] if ref else [], settings)
            return pipelines.generate(resident, settings, req, PROMPT, req.seeds(0), source)

    rec["cold_adapter_load_s"] = round(timed(lambda: resident.use_adapters([refs[0]], settings)), 4)
    images: list[Any] = []
    rec["first_picture_draw_s"] = round(timed(lambda: images.extend(draw(1, refs[0])[0])), 3)
    rec["first_picture_s"] = round(time.time() - T0, 2)
    source = pipelines.Source(images[0], PROMPT)
    rec["vary_first_s"] = round(timed(lambda: draw(1, refs[0], source, variation_of=1)), 3)
    rec["upscale_first_s"] = round(timed(lambda: draw(1, refs[0], source, upscale_of=1)), 3)
    if resident.fast is not None:
        wait = max(5.0, args.deadline - time.time()) if args.deadline else 60.0
        rec["background_builds_done"] = resident.fast.builder.idle.wait(wait)
        rec["builds_done_s"] = round(time.time() - T0, 2)
        resident.fast.save()
        rec["served_so_far"] = resident.fast.served()
    if item == "cold":
        return
    steady(args, rec, resident, settings, refs, draw)


def steady(
    args: argparse.Namespace, rec: Record, resident: Any, settings: Any, refs: list[Any], draw: Any
) -> None:
    """Warm figures: batch 1 and 4 with a LoRA, two people alternating, switch, cold load."""
    for batch, n in ((1, args.n1), (4, args.n4)):
        draw(batch, refs[0])  # warm this batch size (a no-op for warmed shapes)
        rec[f"b{batch}_lora"] = median_of(lambda b=batch: draw(b, refs[0]), n)
    flip = iter(range(10**6))
    rec["b1_alternating_two_people"] = median_of(lambda: draw(1, refs[next(flip) % 2]), args.n1)
    switches = [timed(lambda i=i: resident.use_adapters([refs[i % 2]], settings)) for i in range(8)]
    rec["adapter_switch_s"] = {
        "median_s": statistics.median(switches),
        "runs_s": [round(t, 4) for t in switches],
    }
    resident.adapters.evict(refs[2].name)
    rec["cold_adapter_load_again_s"] = round(timed(lambda: resident.use_adapters([refs[2]], settings)), 4)
    if resident.fast is not None:
        rec["served"] = resident.fast.served()
        rec["shapes"] = resident.fast.shapes()
    rec["unet_tflop_per_image_step"] = unet_flops(resident, args.res) / 1e12


def unet_flops(resident: Any, res: int) -> float:
    """FLOPs of one UNet evaluation for one image (CFG doubles it per step)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    unet = resident.pipe.unet
    latent = res // resident.pipe.vae_scale_factor
    x = torch.zeros(1, unet.config.in_channels, latent, latent, device=resident.device, dtype=resident.dtype)
    context = torch.zeros(
        1, 77, unet.config.cross_attention_dim, device=resident.device, dtype=resident.dtype
    )
    # Attention as plain matmuls, so every backend's FLOPs are counted the same way.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        type(unet).forward(unet, x, torch.tensor(500.0, device=resident.device), context)
    return float(counter.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("item", choices=["plain", "cold", "warm", "eager"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n1", type=int, default=5)
    ap.add_argument("--n4", type=int, default=3)
    ap.add_argument(
        "--compile", default="", help="DREAMBOT_SAMPLE_COMPILE for ours (default: the default, auto)"
    )
    ap.add_argument(
        "--backend", default="", help="torch.compile backend (default inductor; CPU dry runs: eager)"
    )
    ap.add_argument("--deadline", type=float, default=0, help="wall-clock time to stop waiting for builds by")
    args = ap.parse_args()
    rec = Record(args.out)
    rec["device"] = torch.cuda.get_device_name() if CUDA else "cpu"
    if args.item == "plain":
        plain(args, rec)
    else:
        ours(args, args.item, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
