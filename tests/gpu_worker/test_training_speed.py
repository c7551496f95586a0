"""The fast training step, checked without timing it: what one step does (op counts, memory
format, dtype casts), and that the compiled and graphed ways of running it train and resume
exactly like the plain one. The CUDA graph is stood in for on the CPU by `Replay`, which runs
the captured step at each replay: everything but CUDA's own mechanics is exercised."""

from __future__ import annotations

import collections
import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from core.settings import Settings
from core.train_config import build_config
from gpu_worker.training import graphed_step, step_runner
from gpu_worker.training.models import load_components
from gpu_worker.training.prepare import Shape
from gpu_worker.training.trainer import Hooks, Trainer
from tests.helpers.training import FAST, Recorder, make_trained_subject_row, photo_bytes

PROMPTS = ("a photo of sks dog", "a photo of dog")


def _images(n: int, seed: int) -> list[Image.Image]:
    return [Image.open(io.BytesIO(photo_bytes(seed + i))).convert("RGB") for i in range(n)]


def _trainer(model_dir: Path, **overrides: Any) -> Trainer:
    values = dict(
        steps=6, lr_warmup_steps=2, learning_rate=1e-3, progress_interval=1e-6, checkpoint_every=1000,
        mixed_precision="no", preview_interval=0,
    )  # fmt: skip
    values.update(overrides)
    comps = load_components(str(model_dir))
    cfg = build_config(overrides=values).resolved(n_photos=3, resolution=comps.native_resolution)
    return Trainer(cfg, comps, _images(3, 0), _images(2, 50), *PROMPTS)


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in t.trainable.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _interrupted_then_resumed(model_dir: Path, at: int, **overrides: Any) -> dict[str, torch.Tensor]:
    saved: dict[str, Any] = {}
    first = _trainer(model_dir, **overrides)
    hooks = Hooks(
        progress=Recorder(stop_at=at, exc=KeyboardInterrupt), save_checkpoint=lambda s, st: saved.update(st)
    )
    with pytest.raises(KeyboardInterrupt):
        first.train(hooks)
    assert saved["step"] == at
    second = _trainer(model_dir, **overrides)
    second.load_state_dict(saved)
    second.train(Hooks())
    return _weights(second)


class OpCounter(TorchDispatchMode):
    """Counts dtype casts by what is cast, and the memory format of convolution inputs."""

    def __init__(self, frozen: set[int], trained: set[int]) -> None:
        super().__init__()
        self.frozen, self.trained = frozen, trained
        self.casts: collections.Counter[str] = collections.Counter()
        self.conv_inputs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        src, to = None, None
        if name == "_to_copy":
            src, to = args[0], kwargs.get("dtype", args[0].dtype)
        elif name == "copy_":
            src, to = args[1], args[0].dtype
        if isinstance(src, torch.Tensor) and src.dtype != to:
            ptr = src.data_ptr()
            self.casts[
                "frozen" if ptr in self.frozen else "trained" if ptr in self.trained else "activation"
            ] += 1
        if name == "convolution":
            fmt = "channels_last" if args[0].is_contiguous(memory_format=torch.channels_last) else "other"
            self.conv_inputs[fmt] += 1
        return func(*args, **kwargs)


def test_a_bf16_step_casts_no_frozen_weight_and_stays_channels_last(tiny_model_dir: Path) -> None:
    t = _trainer(tiny_model_dir, mixed_precision="bf16", compile="off", cuda_graph="off")
    unet = t.comps.unet
    # On CUDA autocast runs norms in fp32: fp32 norm weights are never cast there either.
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert unet.conv_in.weight.dtype == torch.bfloat16
    frozen = {p.data_ptr() for p in unet.parameters() if not p.requires_grad}
    t.train_step()  # the first step creates the optimizer state; count a later one
    t.step += 1
    with OpCounter(frozen, {p.data_ptr() for p in t.trainable.values()}) as ops:
        t.train_step()
    assert ops.casts["frozen"] == 0
    # each fp32 LoRA factor is cast to bf16 once per step (autocast's cache), and its
    # gradient back once; activations cross dtypes only at the step's edges
    assert ops.casts["trained"] == len(t.trainable)
    assert ops.casts["activation"] <= len(t.trainable) + 8, ops.casts
    assert ops.conv_inputs["other"] == 0 and ops.conv_inputs["channels_last"] > 0, ops.conv_inputs


@pytest.fixture
def fast_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo's tracing and AOT autograd with eager kernels: the compiled path, in seconds."""
    monkeypatch.setitem(step_runner.COMPILE_OPTIONS, "backend", "aot_eager")
    torch._dynamo.reset()


@pytest.mark.usefixtures("fast_compile")
def test_a_compiled_unet_trains_and_resumes_exactly_like_eager(tiny_model_dir: Path) -> None:
    from torch._dynamo.utils import counters

    eager = _trainer(tiny_model_dir, compile="off")
    eager.train(Hooks())
    counters.clear()
    compiled = _trainer(tiny_model_dir, compile="on")
    compiled.train(Hooks())
    assert counters["stats"]["unique_graphs"] == 1  # the whole UNet, one graph, no recompiles
    assert _same(_weights(eager), _weights(compiled))
    assert _same(_weights(compiled), _interrupted_then_resumed(tiny_model_dir, 3, compile="on"))


@pytest.fixture
def replay_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphed_step, "MECHANISM", graphed_step.Replay)


@pytest.mark.usefixtures("replay_graphs")
def test_a_graphed_step_trains_and_resumes_exactly_like_eager(tiny_model_dir: Path) -> None:
    eager = _trainer(tiny_model_dir, compile="off", cuda_graph="off")
    eager.train(Hooks())
    graphed = _trainer(tiny_model_dir, compile="off")
    before = _weights(graphed)
    graphed.runner.graph = graphed.runner._capture()  # warm-up runs at learning rate 0 ...
    assert graphed.runner.graph is not None
    assert _same(before, _weights(graphed))  # ... so the weights are untouched
    opt = step_runner.torch_optimizer(graphed.optimizer)
    assert all(not torch.any(v).item() for s in opt.state.values() for v in s.values())  # state as new
    graphed.train(Hooks())
    assert _same(_weights(eager), _weights(graphed))
    assert _same(_weights(graphed), _interrupted_then_resumed(tiny_model_dir, 4, compile="off"))


class FailingCapture(graphed_step.Replay):
    def capture(self, step: Any, static: dict[str, torch.Tensor]) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_trains_eagerly_with_one_log_line(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(graphed_step, "MECHANISM", FailingCapture)
    eager = _trainer(tiny_model_dir, compile="off", cuda_graph="off")
    eager.train(Hooks())
    with caplog.at_level(logging.WARNING):
        t = _trainer(tiny_model_dir, compile="off")
        t.train(Hooks())
    assert [r.message for r in caplog.records if "capture failed" in r.message] != []
    assert len([r for r in caplog.records if "capture failed" in r.message]) == 1
    assert t.runner.graph is None and _same(_weights(eager), _weights(t))


def test_a_compile_failure_trains_without_compile(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_backend(gm: Any, example_inputs: Any) -> Any:
        raise RuntimeError("inductor ran out of luck")

    monkeypatch.setitem(step_runner.COMPILE_OPTIONS, "backend", broken_backend)
    torch._dynamo.reset()
    eager = _trainer(tiny_model_dir, compile="off")
    eager.train(Hooks())
    with caplog.at_level(logging.WARNING):
        t = _trainer(tiny_model_dir, compile="on")
        t.train(Hooks())
    assert len([r for r in caplog.records if "torch.compile failed" in r.message]) == 1
    assert t.runner.unet is t.unet_p and _same(_weights(eager), _weights(t))


@pytest.mark.usefixtures("fast_compile", "replay_graphs")
def test_a_warmed_worker_trains_its_first_job_on_the_warmed_model_without_compiling(
    sqlite_settings: Settings, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._dynamo.utils import counters

    from gpu_worker.training import resident, warm
    from gpu_worker.training.job import train_subject

    settings = sqlite_settings.model_copy(update={"base_model": str(tiny_model_dir)})
    config = Path(settings.data_dir) / "train.yaml"
    config.write_text("compile: 'on'\nnum_class_images: 2\nclass_sample_steps: 2\nvalidation_images: 0\n")
    settings = settings.model_copy(update={"train_config": str(config)})
    resident.discard()
    phases: list[str] = []
    done = warm.warm(settings, phases.append)
    assert "training step" in done["warmed"] and done["cuda_graph"] is True
    kept = resident.components(settings, str(tiny_model_dir), Shape.planned(build_config()))
    graphs = counters["stats"]["unique_graphs"]

    sid = make_trained_subject_row(settings, tiny_model_dir)
    result = train_subject(settings, sid, {**FAST, "compile": "on"}, Hooks()).to_json()
    assert result["steps"] == FAST["steps"]
    assert counters["stats"]["unique_graphs"] == graphs  # the warm-up's compiled UNet, reused
    assert resident.components(settings, str(tiny_model_dir), Shape.planned(build_config())) is kept
    resident.discard()
