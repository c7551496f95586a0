"""Sampling benchmark: our resident sampler against a plain diffusers pipeline, one run.

    python bench/sample.py --tiny                       # CPU smoke check (tiny model, 64 px)
    python make_model.py /tmp/sd15 && \\
    python bench/sample.py --model /tmp/sd15            # GPU: SD-1.5 architecture, random weights

Both sides draw at the same settings (DPM++ 2M Karras, CFG 7.5, the same seeds, PIL out)
with a person's LoRA active. The plain side does what a naive bot does per request:
`load_lora_weights`, generate, `unload_lora_weights`. Our side keeps the pipeline and
adapters resident (`gpu_worker.pipelines.generate`, what a sampling job calls). Reported:
images/s at batch 1 and 4 for both (ours per variant: eager, and with a compiled UNet),
ours also while alternating two people's adapters,
the adapter switch time (both resident) and a cold adapter load. Speed does not depend
on the weights, so random weights are a faithful stand-in. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PROMPT = "a photo of zwx dog on the moon"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_of(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
    times = [timed(fn) for _ in range(runs)]
    return statistics.median(times), [round(t, 4) for t in times]


def bench_plain(model: str, lora_dir: Path, res: int, steps: int, runs: dict[int, int]) -> dict[str, Any]:
    """A plain StableDiffusionPipeline that loads and unloads the LoRA for every request."""
    from diffusers import StableDiffusionPipeline

    from gpu_worker.pipelines import make_scheduler, pick_device

    device, dtype = pick_device()
    out: dict[str, Any] = {}
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = make_scheduler("dpmpp_2m_karras", pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    out["load_s"] = round(time.perf_counter() - start, 3)

    def request(batch: int, lora: bool = True) -> None:
        if lora:
            pipe.load_lora_weights(str(lora_dir), weight_name="pytorch_lora_weights.safetensors")
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        pipe(PROMPT, num_images_per_prompt=batch, height=res, width=res, num_inference_steps=steps,
             guidance_scale=7.5, generator=gens)  # fmt: skip
        if lora:
            pipe.unload_lora_weights()

    out["warmup_s"] = round(timed(lambda: request(1)), 3)
    for batch, n in runs.items():
        med, times = median_of(lambda b=batch: request(b), n)
        out[f"b{batch}_lora"] = {"median_s": med, "img_per_s": batch / med, "runs_s": times}
    med, times = median_of(lambda: request(1, lora=False), runs[1])
    out["b1_no_lora"] = {"median_s": med, "img_per_s": 1 / med, "runs_s": times}
    return out  # the pipeline goes with this frame


def bench_ours(
    model: str, data_dir: Path, loras: list[bytes], res: int, steps: int, runs: dict[int, int], **flags: Any
) -> dict[str, Any]:
    """Our resident pipeline: adapters cached on disk and in the pipeline, batched CFG."""
    from core.sample_request import SampleRequest
    from core.settings import load_settings
    from core.storage import storage_from_settings
    from gpu_worker.lora_cache import AdapterRef, adapter_name
    from gpu_worker.pipelines import disk_cache, generate, get_resident
    from gpu_worker.preview import latent_preview

    settings = load_settings(_env_file=None, base_model=model, data_dir=data_dir, nsfw_filter=False, **flags)
    storage = storage_from_settings(settings)
    refs = []
    for i, lora in enumerate(loras):
        sha = storage.put(f"subjects/{i}/lora.safetensors", lora)
        refs.append(
            AdapterRef(adapter_name(i, sha), disk_cache(settings).get(f"subjects/{i}/lora.safetensors", sha))
        )
    out: dict[str, Any] = {"flags": flags}
    start = time.perf_counter()
    resident = get_resident(settings)
    sync()
    out["load_s"] = round(time.perf_counter() - start, 3)
    last = [-1e9]

    def report(step: int, total: int, latents: Any) -> None:  # what a job does: a preview a second
        if time.perf_counter() - last[0] >= 1.0:  # gpu_worker.sampling.PROGRESS_INTERVAL
            last[0] = time.perf_counter()
            latent_preview(latents[0].detach().float().cpu().numpy())

    def request(batch: int, ref: AdapterRef) -> None:
        req = SampleRequest(prompt=PROMPT, n=batch, steps=steps, width=res, height=res, seed=0)
        with resident.lock:
            resident.use_adapters([ref], settings)
            generate(resident, settings, req, PROMPT, req.seeds(0), None, report)

    out["cold_adapter_load_s"] = round(timed(lambda: resident.use_adapters([refs[0]], settings)), 4)
    out["warmup_s"] = round(timed(lambda: request(1, refs[0])), 3)
    timed(lambda: resident.use_adapters([refs[1]], settings))  # both resident from here on
    for batch, n in runs.items():
        request(batch, refs[0])  # warm this batch size
        med, times = median_of(lambda b=batch: request(b, refs[0]), n)
        out[f"b{batch}_lora"] = {"median_s": med, "img_per_s": batch / med, "runs_s": times}
    flip = iter(range(10**6))
    med, times = median_of(lambda: request(1, refs[next(flip) % 2]), runs[1])
    out["b1_alternating_two_people"] = {"median_s": med, "img_per_s": 1 / med, "runs_s": times}
    switches = []
    for i in range(6):
        switches.append(timed(lambda i=i: resident.use_adapters([refs[i % 2]], settings)))
    out["adapter_switch_s"] = {
        "median_s": statistics.median(switches),
        "runs_s": [round(t, 4) for t in switches],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a StableDiffusionPipeline folder (e.g. built by make_model.py)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke check: build the tiny test model")
    ap.add_argument("--res", type=int, default=None, help="image side (default 512, 64 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 30, 4 with --tiny)")
    ap.add_argument("--n1", type=int, default=5, help="timed runs at batch 1")
    ap.add_argument("--n4", type=int, default=3, help="timed runs at batch 4")
    ap.add_argument(
        "--variants",
        default="eager",
        help="ours as: eager, compiled (torch.compile'd UNet; the first call per shape compiles)",
    )
    ap.add_argument("--out", default="bench_sample.json")
    args = ap.parse_args()
    if not args.model and not args.tiny:
        ap.error("give --model DIR or --tiny")
    res = args.res or (64 if args.tiny else 512)
    steps = args.steps or (4 if args.tiny else 30)
    runs = {1: args.n1, 4: args.n4}

    from tests.helpers.lora import make_lora_bytes

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from tests.helpers.tiny_model import build_tiny_pipeline

            model = str(build_tiny_pipeline(tmp / "tiny-sd"))
        loras = [make_lora_bytes(Path(model), seed=s, scale=0.01) for s in (1, 2)]
        lora_dir = tmp / "lora"
        lora_dir.mkdir()
        (lora_dir / "pytorch_lora_weights.safetensors").write_bytes(loras[0])
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "model": model if args.model else "tiny",
            "res": res,
            "steps": steps,
            "guidance": 7.5,
            "scheduler": "dpmpp_2m_karras",
        }
        result["plain"] = bench_plain(model, lora_dir, res, steps, runs)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the plain pipeline's memory back before ours loads
        for variant in args.variants.split(","):
            from gpu_worker.pipelines import drop_residents

            drop_residents()  # each variant loads its own resident pipeline
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            flags = {"sample_compile": variant == "compiled"}
            result[f"ours_{variant}"] = bench_ours(model, tmp / variant, loras, res, steps, runs, **flags)
            for batch in runs:
                key = f"b{batch}_lora"
                speedup = result[f"ours_{variant}"][key]["img_per_s"] / result["plain"][key]["img_per_s"]
                result[f"speedup_{variant}_{key}"] = speedup
            # After each variant: a later one (a compile) may run out of the device call's time.
            Path(args.out).write_text(json.dumps(result, indent=1))
            print_table(result)
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(
        f"SAMPLING {r['device']} | torch {r['torch']} | {r['res']}px {r['steps']} steps DPM++ 2M Karras CFG 7.5"
    )
    variants = [k.removeprefix("ours_") for k in r if k.startswith("ours_")]
    print(
        f"{'':26}{'plain s':>9}{'plain img/s':>12}"
        + "".join(f"{v + ' s':>14}{'speedup':>9}" for v in variants)
    )
    for batch in (1, 4):
        key = f"b{batch}_lora"
        p = r["plain"][key]
        row = f"{'batch ' + str(batch) + ', LoRA active':26}{p['median_s']:9.3f}{p['img_per_s']:12.3f}"
        for v in variants:
            row += f"{r['ours_' + v][key]['median_s']:14.3f}{r[f'speedup_{v}_{key}']:9.2f}"
        print(row)
    print(f"plain batch 1 without LoRA: {r['plain']['b1_no_lora']['median_s']:.3f} s")
    for v in variants:
        o = r["ours_" + v]
        alt = o["b1_alternating_two_people"]
        print(f"ours ({v}): batch 1 alternating two people's LoRAs {alt['median_s']:.3f} s; adapter switch "
              f"{o['adapter_switch_s']['median_s'] * 1000:.1f} ms; cold adapter load "
              f"{o['cold_adapter_load_s'] * 1000:.1f} ms; first picture {o['warmup_s']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
