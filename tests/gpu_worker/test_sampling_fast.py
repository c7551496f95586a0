"""The sampling fast path: warmed shapes compiled before the first job, new shapes drawn
eager while they build, adapters swapped in place so nothing recompiles.

On the CPU, dynamo's eager backend stands in for inductor (the same tracing, guards and
recompiles, no kernel generation: inductor takes minutes per graph on two CPU cores);
CUDA-graph capture only exists on a GPU (`bench/sample.py` exercises it there).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from core.db import dispose_engines
from core.models import Job
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker import fast_path, graphs, pipelines
from tests.helpers.lora import make_lora_bytes, make_subject, make_user, run_sample, sample_settings

PARAMS = {"prompt": "a photo of zwx dog on the moon", "seed": 5, "steps": 2}


@pytest.fixture(autouse=True)
def fresh_pipeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(fast_path.COMPILE_OPTIONS, "backend", "eager")
    pipelines.drop_residents()
    yield
    pipelines.drop_residents()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    yield sample_settings(
        tmp_path / "var", tiny_model_dir, sample_compile="on", sample_warm="1,2", sample_warm_later=""
    )
    dispose_engines()


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path) -> list[bytes]:
    return [make_lora_bytes(tiny_model_dir, seed=s, scale=0.2) for s in (1, 2, 3)]


def pixels(settings: Settings, job: Job) -> list[np.ndarray]:
    assert job.status == "succeeded", job.error
    store = storage_from_settings(settings)
    return [np.asarray(PILImage.open(io.BytesIO(store.read_bytes(i["key"])))) for i in job.result["images"]]


def draw(settings: Settings, params: dict[str, Any], who: tuple[int, int | None]) -> list[np.ndarray]:
    owner, subject = who
    return pixels(settings, run_sample(settings, params, owner, () if subject is None else (subject,)))


def warmed(settings: Settings) -> pipelines.Resident:
    resident = pipelines.get_resident(settings)
    pipelines.warm(resident, settings, lambda doing: None)
    return resident


def test_cpu_workers_stay_eager_unless_asked(settings: Settings) -> None:
    auto = settings.model_copy(update={"sample_compile": "auto"})
    resident = pipelines.get_resident(auto)
    assert resident.fast is None and "forward" not in vars(resident.pipe.unet)
    assert pipelines.warm(resident, auto, lambda doing: None)["compile"] == "off"
    pipelines.drop_residents()
    asked = pipelines.get_resident(settings)
    assert asked.fast is not None and asked.fast.unet.cuda_graphs is False  # no CUDA graphs on a CPU


def test_compiled_draws_the_eager_pixels_and_people_never_recompile(
    settings: Settings, loras: list[bytes]
) -> None:
    from torch._dynamo.utils import counters

    owners = [make_user(settings, f"u{i}") for i in range(3)]
    people = [(o, make_subject(settings, o, lora, name="rex")) for o, lora in zip(owners, loras, strict=True)]
    requests = [({**PARAMS, "n": 1 + i % 2}, who) for i, who in enumerate([*people, people[0]])]
    requests.append(({**PARAMS, "scheduler": "euler_a"}, (owners[0], None)))  # another scheduler, same graphs

    resident = warmed(settings)
    graphs_after_warmup = counters["stats"]["unique_graphs"]
    assert sorted(resident.fast.shapes()["unet"]) == ["2x4x32x32 (compiled)", "4x4x32x32 (compiled)"]
    resident.fast.unet.counts.clear()
    resident.fast.decoder.counts.clear()
    jobs = [
        run_sample(settings, params, who[0], () if who[1] is None else (who[1],)) for params, who in requests
    ]
    fast = [pixels(settings, job) for job in jobs]
    # A variation of a picture: img2img latents come channels-last from the VAE encoder.
    vary = {"variation_of": jobs[0].result["image_ids"][0], "steps": 2, "strength": 1.0}
    assert run_sample(settings, vary, owners[0], (people[0][1],)).status == "succeeded"
    assert counters["stats"]["unique_graphs"] == graphs_after_warmup  # three people, a vary: no recompile
    assert resident.fast.served() == {
        "unet": {"compiled": 2 * (len(requests) + 1)},  # 2 steps each, every one through the compiled graph
        "vae_decoder": {"compiled": sum(p.get("n", 1) for p, _ in requests) + 1},  # image by image
    }
    assert not np.array_equal(fast[0][0], fast[1][0])  # the people did differ

    pipelines.drop_residents()
    eager_settings = settings.model_copy(update={"sample_compile": "off"})
    eager = [draw(eager_settings, params, who) for params, who in requests]
    for fast_images, eager_images in zip(fast, eager, strict=True):
        for a, b in zip(fast_images, eager_images, strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_an_unwarmed_shape_is_drawn_eager_at_once_while_it_builds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build of the new shape is held until the picture is done: the job cannot have
    waited for it. Then the same shape goes through the built graph."""
    events: list[str] = []
    release = threading.Event()
    build = graphs.FastForward.make_runner

    def held_build(self: graphs.FastForward, call: Any, builder: Any) -> graphs.Runner:
        if builder is not None:  # background builds only; the warm-up builds in the foreground
            events.append(f"build held: {self.describe(call)}")
            assert release.wait(120)
        runner = build(self, call, builder)
        events.append(f"built: {self.describe(call)}")
        return runner

    monkeypatch.setattr(graphs.FastForward, "make_runner", held_build)
    resident = warmed(settings)
    resident.fast.unet.counts.clear()
    resident.fast.decoder.counts.clear()
    owner = make_user(settings)
    events.clear()
    wide = {**PARAMS, "width": 96}  # 96x64: a shape nobody warmed
    first = run_sample(settings, wide, owner)
    events.append(f"picture done: {first.status}")
    # Both steps eager, and the decoder's new tile shapes too (its native-size tile was warm).
    assert resident.fast.served()["unet"] == {"eager": 2} and resident.fast.decoder.counts["eager"] > 0
    release.set()
    assert resident.fast.builder.idle.wait(120)
    assert events[-1].startswith("built") and events.index("picture done: succeeded") < events.index(
        "built: unet 2x4x32x48"
    )
    assert "build held: unet 2x4x32x48" in events[: events.index("picture done: succeeded")]

    before = dict(resident.fast.unet.counts)
    again = run_sample(settings, wide, owner)
    assert resident.fast.unet.counts["compiled"] == before.get("compiled", 0) + 2
    assert resident.fast.unet.counts["eager"] == before["eager"]  # no eager step this time
    assert np.abs(pixels(settings, again)[0].astype(int) - pixels(settings, first)[0].astype(int)).max() <= 2


def test_adapters_change_weights_in_place_so_captured_graphs_stay_valid(
    settings: Settings, loras: list[bytes]
) -> None:
    """A CUDA graph reads the weights at the addresses it was captured with: loading,
    swapping and evicting people must never move a parameter."""
    settings = settings.model_copy(update={"resident_adapters": 2})
    resident = pipelines.get_resident(settings)

    def addresses() -> dict[str, int]:
        parts = {
            "unet": resident.pipe.unet,
            "text_encoder": resident.pipe.text_encoder,
            "vae": resident.pipe.vae,
        }
        return {f"{p}.{n}": t.data_ptr() for p, m in parts.items() for n, t in m.named_parameters()}

    before = addresses()
    owner = make_user(settings)
    people = [
        make_subject(settings, owner, lora, name=f"p{i}", token=f"t{i}") for i, lora in enumerate(loras)
    ]
    for who in [(people[0],), (people[1],), (people[0], people[1]), (people[2],), (people[0],), ()]:
        assert run_sample(settings, PARAMS, owner, who).status == "succeeded"
        assert addresses() == before
    assert resident.adapters.loads == 4  # a cold load, swaps, an eviction and a reload happened


def test_signatures_key_what_a_graph_depends_on() -> None:
    x = torch.zeros(2, 4, 8, 8)
    base = graphs.signature((x, torch.tensor(1.0)), {"return_dict": False, "cond": None})
    assert base == graphs.signature(
        (torch.ones(2, 4, 8, 8), torch.tensor(5.0)), {"return_dict": False, "cond": None}
    )
    assert base != graphs.signature(
        (torch.zeros(4, 4, 8, 8), torch.tensor(1.0)), {"return_dict": False, "cond": None}
    )
    assert base != graphs.signature((x.half(), torch.tensor(1.0)), {"return_dict": False, "cond": None})
    assert base != graphs.signature((x, torch.tensor(1.0)), {"return_dict": True, "cond": None})
    assert graphs.signature((x,), {"cross_attention_kwargs": {"scale": object()}}) is None  # not replayable
    assert graphs.FastForward.label(base) == "2x4x8x8"
    # Every scheduler's timestep becomes one float32 tensor: one graph for all of them.
    for t in (torch.tensor(981), torch.tensor(981.0), 981):
        (_, step), _ = fast_path.unet_inputs((x, t), {})
        assert step.dtype == torch.float32 and step.item() == 981.0


def test_repeated_prompts_reuse_the_text_encoder_until_the_adapters_change(
    settings: Settings, loras: list[bytes], tmp_path: Path
) -> None:
    from gpu_worker.lora_cache import AdapterRef

    settings = settings.model_copy(update={"sample_compile": "off"})
    resident = pipelines.get_resident(settings)
    calls: list[int] = []
    resident.pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    owner = make_user(settings)
    first = run_sample(settings, PARAMS, owner)
    again = run_sample(settings, PARAMS, owner)
    assert len(calls) == 2  # the prompt and the empty negative prompt, encoded once
    assert np.array_equal(pixels(settings, first)[0], pixels(settings, again)[0])
    (tmp_path / "rex.safetensors").write_bytes(loras[0])
    resident.use_adapters([AdapterRef("rex", tmp_path / "rex.safetensors")], settings)
    resident.encode(PARAMS["prompt"], "")  # an adapter may change the text encoder: encoded again
    assert len(calls) == 4


def test_shapes_warmed_later_build_in_the_background_for_the_real_calls(settings: Settings) -> None:
    """`DREAMBOT_SAMPLE_WARM_LATER=upscale` queues the 2x UNet build right after the warm-up,
    from inputs made up in the pipelines' form: the first real upscale then finds it built."""
    settings = settings.model_copy(update={"sample_warm": "1", "sample_warm_later": "upscale"})
    resident = warmed(settings)
    assert resident.fast.builder.idle.wait(300)
    assert "2x4x64x64 (compiled)" in resident.fast.shapes()["unet"]
    owner = make_user(settings)
    first = run_sample(settings, PARAMS, owner)
    resident.fast.unet.counts.clear()
    upscale = run_sample(settings, {"upscale_of": first.result["image_ids"][0], "steps": 2}, owner)
    assert pixels(settings, upscale)[0].shape == (128, 128, 3)
    assert resident.fast.served()["unet"] == {"compiled": 1}  # img2img at strength 0.x: one step, not eager
