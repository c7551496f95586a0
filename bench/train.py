"""Our DreamBooth trainer against diffusers' own example scripts, same model, photos,
class images and steps, in one run.

    # CPU smoke check with a tiny model built here (seconds per item):
    python bench/train.py --tiny --ref-dir /path/with/the/two/scripts
    # a GPU with the SD-1.5 architecture (build it with gpu-anchor's make_model.py):
    python bench/train.py --model /tmp/sd15 --ref-dir .gpu/ref --res 512 --steps 30 130

`--ref-dir` holds `train_dreambooth_lora.py` and `train_dreambooth.py` fetched from the
diffusers repository (never committed). Where torchvision cannot be imported, temporary
copies are patched to use `--tv-shim` (gpu-anchor's transforms stand-in). Without
`--ref-dir` only our side runs.

Each item runs in its own process. Measured: steady-state seconds per step (slope of
step-completion times from step min(10, n/3) on: tqdm updates for the reference, synced
progress reports for ours), whole-process wall time to a saved model, class images per
second, and peak memory (GPU memory via nvidia-smi, else the process tree's RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path("/work/shared/gpu-anchor/shim/dreambooth_tv_shim.py")
STEP_RE = re.compile(rb"(\d+)/(\d+) \[")
CONFIGS = {"lora": ("train_dreambooth_lora.py", "lora", False), "full": ("train_dreambooth.py", "full", False),
           "full_te": ("train_dreambooth.py", "full", True)}  # fmt: skip
LR = {"lora": 1e-4, "full": 5e-6, "full_te": 2e-6}


# -- measuring a child process ----------------------------------------------------------------
class Peak(threading.Thread):
    """Peak GPU memory (nvidia-smi) or, on CPU, peak RSS of a process tree, in MiB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()
        self.smi = shutil.which("nvidia-smi") is not None and _gpu_mib() is not None

    def run(self) -> None:
        import psutil

        while not self.done.wait(0.2):
            if self.smi:
                self.peak = max(self.peak, _gpu_mib() or 0.0)
                continue
            try:
                proc = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss / 2**20)


def _gpu_mib() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def run_child(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd`; timestamp each tqdm/line update (split on \\r and \\n) as it arrives."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak = Peak(proc.pid)
    peak.start()
    stamps: list[tuple[float, bytes]] = []
    assert proc.stdout is not None
    with log.open("wb") as out:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            now = time.monotonic() - t0
            out.write(chunk)
            stamps.extend((now, part) for part in re.split(rb"[\r\n]", chunk) if part.strip())
    rc = proc.wait()
    peak.done.set()
    peak.join()
    return {"rc": rc, "wall_s": time.monotonic() - t0, "peak_mib": round(peak.peak), "stamps": stamps}


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares seconds per step over the steady part (from step min(10, n/3))."""
    if not points:
        return None
    n = max(s for s, _ in points)
    pts = sorted({s: t for s, t in points if s >= min(10, n // 3)}.items())
    if len(pts) < 2:
        return None
    ms, mt = sum(s for s, _ in pts) / len(pts), sum(t for _, t in pts) / len(pts)
    var = sum((s - ms) ** 2 for s, _ in pts)
    return sum((s - ms) * (t - mt) for s, t in pts) / var if var else None


def tqdm_points(stamps: list[tuple[float, bytes]], marker: bytes) -> list[tuple[int, float]]:
    points: dict[int, float] = {}
    for t, text in stamps:
        if marker in text and (m := STEP_RE.search(text)):
            points.setdefault(int(m.group(1)), t)  # the first time a count shows
    return sorted(points.items())


# -- the two sides --------------------------------------------------------------------------
def reference(
    args: argparse.Namespace, cfg: str, steps: int, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    script = work / "scripts" / CONFIGS[cfg][0]
    out = work / "out" / f"ref-{cfg}-{steps}"
    cmd = [sys.executable, str(script), "--pretrained_model_name_or_path", args.model,
           "--instance_data_dir", str(work / "instance"), "--class_data_dir", str(work / "class_ref"),
           "--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog",
           "--with_prior_preservation", "--prior_loss_weight", "1.0", "--num_class_images", str(args.n_class),
           "--sample_batch_size", str(args.batch), "--resolution", str(args.res), "--train_batch_size", "1",
           "--learning_rate", str(LR[cfg]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
           "--max_train_steps", str(steps), "--checkpointing_steps", "100000", "--mixed_precision", args.mp,
           "--seed", "0", "--output_dir", str(out)]  # fmt: skip
    if CONFIGS[cfg][2]:
        cmd.append("--train_text_encoder")
    r = run_child(cmd, work / "logs" / f"ref-{cfg}-{steps}.log", env)
    shutil.rmtree(out, ignore_errors=True)
    stamps = r.pop("stamps")
    gen = tqdm_points(stamps, b"Generating")  # batches: the span from "0/k" to "k/k"
    gen_s = gen[-1][1] - gen[0][1] if len(gen) > 1 else None
    per_batch = (gen[-1][1] - gen[1][1]) / (len(gen) - 2) if len(gen) > 2 else None  # after the first
    return {**r, "s_per_step": slope(tqdm_points(stamps, b"Steps")), "gen_seconds": gen_s,
            "steady_s_per_img": None if per_batch is None else per_batch / args.batch}  # fmt: skip


def ours(args: argparse.Namespace, cfg: str, steps: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    result = work / "out" / f"ours-{cfg}-{steps}.json"
    cmd = [sys.executable, __file__, "_ours", "--model", args.model, "--work", str(work), "--cfg", cfg,
           "--steps", str(steps), "--res", str(args.res), "--mp", args.mp, "--json", str(result)]  # fmt: skip
    r = run_child(cmd, work / "logs" / f"ours-{cfg}-{steps}.log", env)
    r.pop("stamps")
    inner = json.loads(result.read_text()) if result.exists() else {}
    return {**r, **inner, "s_per_step": slope([(s, t) for s, t in inner.get("timings", [])])}


def _ours_child(argv: list[str]) -> None:
    """In the child: train with our Trainer on the bench's photos and class images."""
    p = argparse.ArgumentParser()
    for name in ("--model", "--work", "--cfg", "--mp", "--json"):
        p.add_argument(name, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--res", type=int, required=True)
    a = p.parse_args(argv)
    from PIL import Image

    from core.train_config import build_config
    from gpu_worker.training.export import write_full, write_lora
    from gpu_worker.training.models import load_components
    from gpu_worker.training.trainer import Hooks, Trainer

    work, (_, method, te) = Path(a.work), CONFIGS[a.cfg]
    load = lambda d: [Image.open(f).convert("RGB") for f in sorted((work / d).iterdir())]  # noqa: E731
    inst, klass = load("instance"), load("class_ours")
    mp = "auto" if a.mp == "bf16" else a.mp
    overrides = dict(method=method, train_text_encoder=te, steps=a.steps, learning_rate=LR[a.cfg], resolution=a.res,
                     lr_scheduler="constant", lr_warmup_steps=0, mixed_precision=mp, progress_interval=0.25,
                     checkpoint_every=10**9, num_class_images=len(klass))  # fmt: skip
    comps = load_components(a.model)
    cfg = build_config(overrides=overrides).resolved(n_photos=len(inst), resolution=comps.native_resolution)
    trainer = Trainer(cfg, comps, inst, klass, "a photo of sks dog", "a photo of dog")
    stats = trainer.train(Hooks())
    with tempfile.TemporaryDirectory() as tmp:
        (write_lora if method == "lora" else write_full)(trainer, Path(tmp))  # type: ignore[operator]
    t0 = stats.timings[0][1]
    out = {"timings": [(s, t - t0) for s, t in stats.timings], "precision": trainer.precision}
    import torch

    if torch.cuda.is_available():
        out["torch_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    Path(a.json).write_text(json.dumps(out))


def _ours_classgen(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--res", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    a = p.parse_args(argv)
    from core.storage import LocalStorage
    from gpu_worker.training.class_images import ensure_class_images

    storage, work = LocalStorage(Path(a.work) / "storage"), Path(a.work)
    t0, stamps = time.monotonic(), []
    got = ensure_class_images(storage, base_model=a.model, prompt="a photo of dog", resolution=a.res,
                              count=a.n, batch_size=a.batch,
                              progress=lambda done, total: stamps.append((done, time.monotonic())))  # fmt: skip
    steady = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else None
    print(json.dumps({"generated": got.generated, "seconds": time.monotonic() - t0,
                      "gen_seconds": got.generation_seconds, "steady_s_per_img": steady}))  # fmt: skip
    (work / "class_ours").mkdir(exist_ok=True)
    for i, im in enumerate(got.images):
        im.save(work / "class_ours" / f"{i:05d}.jpg", quality=95)


# -- setup and report -----------------------------------------------------------------------
def prepare(args: argparse.Namespace, work: Path) -> dict[str, str]:
    for d in ("logs", "out", "instance", "class_ref", "scripts"):
        (work / d).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from tests.helpers.training import photo_bytes

    for i in range(5):
        (work / "instance" / f"instance_{i}.jpg").write_bytes(photo_bytes(i, (args.res + 32, args.res + 32)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), str(work / "scripts"), env.get("PYTHONPATH")])
    )
    if args.ref_dir:
        has_tv = subprocess.run([sys.executable, "-c", "import torchvision.transforms"], capture_output=True)
        for name in ("train_dreambooth_lora.py", "train_dreambooth.py"):
            text = (Path(args.ref_dir) / name).read_text()
            if has_tv.returncode != 0:
                if not Path(args.tv_shim).exists():
                    sys.exit(f"torchvision is missing and there is no --tv-shim at {args.tv_shim}")
                shutil.copy(args.tv_shim, work / "scripts" / "dreambooth_tv_shim.py")
                text = text.replace(
                    "from torchvision import transforms", "import dreambooth_tv_shim as transforms"
                )
            (work / "scripts" / name).write_text(text)
    return env


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_ours", "_classgen"):
        sys.path.insert(0, str(ROOT))
        (_ours_child if sys.argv[1] == "_ours" else _ours_classgen)(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="build and use the tiny test model (CPU smoke check)")
    p.add_argument("--model", help="a Stable Diffusion folder (e.g. built by gpu-anchor/make_model.py)")
    p.add_argument(
        "--ref-dir", help="folder with diffusers' train_dreambooth_lora.py and train_dreambooth.py"
    )
    p.add_argument("--tv-shim", default=str(SHIM))
    p.add_argument("--configs", default="lora,full,full_te")
    p.add_argument(
        "--steps", type=int, nargs="+", metavar="S", help="one or two step counts (slope from the last)"
    )
    p.add_argument(
        "--sides", default="ours,ref", help="ours, ref or both (ours' LoRA path: bench/train_job.py)"
    )
    p.add_argument("--res", type=int)
    p.add_argument("--mp", default=None, help="no | fp16 | bf16 (default: bf16 on CUDA, else no)")
    p.add_argument(
        "--n-class", type=int, default=24, help="class images (3 batches: a steady rate after the first)"
    )
    p.add_argument("--batch", type=int, default=8, help="class-image batch size")
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    cuda = subprocess.run(
        [sys.executable, "-c", "import torch,sys; sys.exit(torch.cuda.is_available())"]
    ).returncode
    args.mp = args.mp or ("bf16" if cuda else "no")
    if args.tiny:
        sys.path.insert(0, str(ROOT))
        from tests.helpers.tiny_model import build_tiny_pipeline

        args.model = str(build_tiny_pipeline(work / "tiny-sd"))
        args.res, args.steps = args.res or 64, args.steps or (4, 12)
        args.n_class, args.batch = min(args.n_class, 6), min(args.batch, 2)
    if not args.model:
        p.error("--model or --tiny is required")
    args.res, args.steps = args.res or 512, tuple(args.steps or (30, 130))
    sides = set(args.sides.split(","))
    env = prepare(args, work)
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "tv_shim"}, "items": {}}

    def item(name: str, fn: Any, *a: Any) -> dict[str, Any]:
        print(f"[bench] {name} …", flush=True)
        r = fn(*a)
        results["items"][name] = r
        print(f"[bench] {name}: rc={r.get('rc')} wall={fmt(r.get('wall_s'), 1)}s "
              f"s/step={fmt(r.get('s_per_step'))} peak={r.get('peak_mib')}MiB", flush=True)  # fmt: skip
        if args.out:  # after every item: a device call's time limit may cut the run short
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        return r

    # Class images: ours into storage (then copied to class_ours), the reference's own run.
    if "ours" in sides:
        cg = item("classgen_ours", run_child, [sys.executable, __file__, "_classgen", "--model", args.model,
                  "--work", str(work), "--n", str(args.n_class), "--res", str(args.res), "--batch", str(args.batch)],
                  work / "logs" / "classgen_ours.log", env)  # fmt: skip
        for _, text in cg.pop("stamps"):
            if text.startswith(b"{"):
                cg.update(json.loads(text))
    if args.ref_dir and "ref" in sides:
        item("classgen_ref", reference, args, "lora", 0, work, env)
    configs = [c for c in args.configs.split(",") if c]
    for cfg in configs:
        for steps in args.steps:
            if "ours" in sides:
                item(f"ours_{cfg}_{steps}", ours, args, cfg, steps, work, env)
            if args.ref_dir and "ref" in sides:
                item(f"ref_{cfg}_{steps}", reference, args, cfg, steps, work, env)
    report(results, args, configs)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))


def report(results: dict[str, Any], args: argparse.Namespace, configs: list[str]) -> None:
    items, s1, s2 = results["items"], args.steps[0], args.steps[-1]
    print("\n" + "=" * 96)
    print(
        f"model {args.model} | res {args.res} | precision {args.mp} | steps {s1}/{s2} | 1 instance + 1 class/step"
    )
    print(
        f"{'config':<9}{'side':<6}{'s/step(slope)':>14}{'s/step(diff)':>13}{'wall_S2_s':>11}{'peak_MiB':>10}"
    )
    for cfg in configs:
        for side in ("ours", "ref"):
            a, b = items.get(f"{side}_{cfg}_{s1}"), items.get(f"{side}_{cfg}_{s2}")
            if not b:
                continue
            diff = (
                (b["wall_s"] - a["wall_s"]) / (s2 - s1) if s2 > s1 and a and b["rc"] == 0 == a["rc"] else None
            )
            peak = max(x.get("peak_mib", 0) for x in (a, b) if x)
            print(
                f"{cfg:<9}{side:<6}{fmt(b.get('s_per_step')):>14}{fmt(diff):>13}{fmt(b['wall_s'], 1):>11}{peak:>10}"
            )
        o, r = items.get(f"ours_{cfg}_{s2}"), items.get(f"ref_{cfg}_{s2}")
        for side, x in (("ours", o), ("ref", r)):
            if x and x.get("s_per_step") and x["rc"] == 0:  # setup (load, caches, save) + 800 steps
                usable = x["wall_s"] + (800 - s2) * x["s_per_step"]
                print(f"{'':<9}{side}: an 800-step model {usable:.1f}s after the process starts (projected)")
        if o and r and o.get("s_per_step") and r.get("s_per_step"):
            print(f"{'':<9}ratio ref/ours: per step {r['s_per_step'] / o['s_per_step']:.2f}x, "
                  f"wall {r['wall_s'] / o['wall_s']:.2f}x, peak memory ours/ref "
                  f"{o['peak_mib'] / max(r['peak_mib'], 1):.2f}")  # fmt: skip
    cg, ref = items.get("classgen_ours", {}), items.get("classgen_ref", {})
    if cg.get("generated"):
        print(
            f"class images, ours: {cg['generated']} in {cg['gen_seconds']:.2f}s "
            f"({cg['gen_seconds'] / cg['generated']:.3f} s/img; {cg['seconds']:.2f}s with the pipeline load)"
        )
    if ref.get("gen_seconds"):
        print(
            f"class images, reference: {args.n_class} in {ref['gen_seconds']:.2f}s "
            f"({ref['gen_seconds'] / args.n_class:.3f} s/img; process wall {ref['wall_s']:.1f}s)"
        )
        if cg.get("gen_seconds"):
            print(
                f"class-image speed-up ref/ours per image: "
                f"{(ref['gen_seconds'] / args.n_class) / (cg['gen_seconds'] / cg['generated']):.2f}x"
            )
    if cg.get("steady_s_per_img") and ref.get("steady_s_per_img"):
        print(
            f"class images after the first batch: ours {cg['steady_s_per_img']:.3f} s/img, reference "
            f"{ref['steady_s_per_img']:.3f} s/img: {ref['steady_s_per_img'] / cg['steady_s_per_img']:.2f}x"
        )
    print("=" * 96)


if __name__ == "__main__":
    main()
