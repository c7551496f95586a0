"""People's LoRAs: hot-swap, two at once, the resident LRU and the verified disk cache."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from core.db import dispose_engines
from core.models import Job
from core.settings import Settings
from core.storage import LocalStorage, sha256_bytes, storage_from_settings
from gpu_worker import pipelines
from gpu_worker.lora_cache import DamagedAdapter, LoraDiskCache, adapter_name
from tests.helpers.lora import make_lora_bytes, make_subject, make_user, run_sample, sample_settings

PARAMS = {"prompt": "a photo of zwx dog on the moon", "seed": 5, "steps": 2, "scheduler": "euler_a"}


@pytest.fixture(autouse=True)
def fresh_pipeline() -> Iterator[None]:
    pipelines.drop_residents()
    yield
    pipelines.drop_residents()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    yield sample_settings(tmp_path / "var", tiny_model_dir, resident_adapters=2)
    dispose_engines()


def peft_layers(pipe: object) -> int:
    """peft wrappers left in the model: adapters live beside it, merged, never as layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = [*pipe.unet.modules(), *pipe.text_encoder.modules()]  # type: ignore[attr-defined]
    return sum(isinstance(m, BaseTunerLayer) for m in modules)


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path) -> list[bytes]:
    return [make_lora_bytes(tiny_model_dir, seed=s) for s in (1, 2, 3)]


def picture(settings: Settings, job: Job) -> np.ndarray:
    assert job.status == "succeeded", job.error
    data = storage_from_settings(settings).read_bytes(job.result["images"][0]["key"])
    return np.asarray(PILImage.open(io.BytesIO(data)))


def test_hot_swap_changes_the_picture_and_swapping_back_restores_it(
    settings: Settings, loras: list[bytes]
) -> None:
    owner = make_user(settings)
    rex = make_subject(settings, owner, loras[0], name="rex", token="zwx", class_noun="dog")
    fido = make_subject(settings, owner, loras[1], name="fido", token="sks", class_noun="dog")
    base = picture(settings, run_sample(settings, PARAMS, owner))
    with_rex = picture(settings, run_sample(settings, PARAMS, owner, (rex,)))
    with_fido = picture(
        settings, run_sample(settings, {**PARAMS, "prompt": "a photo of zwx dog"}, owner, (fido,))
    )
    again_rex = picture(settings, run_sample(settings, PARAMS, owner, (rex,)))
    adapters = pipelines.get_resident(settings).adapters
    rex_name = adapter_name(rex, sha256_bytes(loras[0]))
    assert adapters.active == [rex_name]
    assert peft_layers(pipelines.get_resident(settings).pipe) == 0
    base_again = picture(settings, run_sample(settings, PARAMS, owner))
    assert not np.array_equal(base, with_rex)
    assert not np.array_equal(with_rex, with_fido)
    assert np.array_equal(with_rex, again_rex)  # swapped back: the same adapter, the same pixels
    assert np.array_equal(base, base_again)  # no subject: exactly the base model again
    assert adapters.active == []
    assert adapters.loads == 2  # rex was still resident when asked for again


def test_two_subjects_in_one_picture(settings: Settings, loras: list[bytes]) -> None:
    owner = make_user(settings)
    rex = make_subject(settings, owner, loras[0], name="rex", token="zwx", class_noun="dog")
    tom = make_subject(settings, owner, loras[1], name="tom", token="sks", class_noun="cat")
    params = {**PARAMS, "prompt": "zwx playing with a cat"}
    job = run_sample(settings, {**params, "subject_ids": [tom]}, owner, (rex,))
    both = picture(settings, job)
    assert job.result["prompt"] == "a photo of sks cat, zwx dog playing with a cat"
    assert sorted(job.result["subject_ids"]) == sorted([rex, tom])
    adapters = pipelines.get_resident(settings).adapters
    assert sorted(adapters.active) == sorted(
        [adapter_name(rex, sha256_bytes(loras[0])), adapter_name(tom, sha256_bytes(loras[1]))]
    )
    only_rex = picture(settings, run_sample(settings, params, owner, (rex,)))
    assert not np.array_equal(both, only_rex)


def test_resident_lru_evicts_beyond_capacity_and_reloads_on_demand(
    settings: Settings, loras: list[bytes]
) -> None:
    owner = make_user(settings)
    ids = [
        make_subject(settings, owner, lora, name=f"s{i}", token="zwx" if i == 0 else f"t{i}")
        for i, lora in enumerate(loras)
    ]
    names = [adapter_name(i, sha256_bytes(lora)) for i, lora in zip(ids, loras, strict=True)]
    first = picture(settings, run_sample(settings, PARAMS, owner, (ids[0],)))
    run_sample(settings, PARAMS, owner, (ids[1],))
    run_sample(settings, PARAMS, owner, (ids[2],))  # capacity 2: the first is deleted from the pipeline
    resident = pipelines.get_resident(settings)
    assert resident.adapters.resident == names[1:]
    assert peft_layers(resident.pipe) == 0
    again = picture(settings, run_sample(settings, PARAMS, owner, (ids[0],)))  # loaded again
    assert resident.adapters.resident == [names[2], names[0]] and resident.adapters.loads == 4
    assert np.array_equal(first, again)


def test_disk_cache_verifies_refetches_and_stays_bounded(tmp_path: Path, loras: list[bytes]) -> None:
    storage = LocalStorage(tmp_path / "storage")
    shas = [storage.put(f"subjects/{i}/lora.safetensors", lora) for i, lora in enumerate(loras)]
    cache = LoraDiskCache(tmp_path / "cache", storage, max_bytes=int(len(loras[0]) * 2.5))
    path = cache.get("subjects/0/lora.safetensors", shas[0])
    assert path.read_bytes() == loras[0]

    path.write_bytes(b"garbage")  # a damaged local copy is fetched again
    assert cache.get("subjects/0/lora.safetensors", shas[0]).read_bytes() == loras[0]

    cache.get("subjects/1/lora.safetensors", shas[1])
    cache.get("subjects/0/lora.safetensors", shas[0])  # used last: 1 is now the oldest
    cache.get("subjects/2/lora.safetensors", shas[2])
    assert cache.cached() == sorted([shas[0], shas[2]])  # over the byte limit: 1 left the disk

    storage.put("subjects/1/lora.safetensors", loras[1][:-10] + b"0123456789")  # damaged original
    with pytest.raises(DamagedAdapter, match="damaged"):
        cache.get("subjects/1/lora.safetensors", shas[1], "“tom”")
    assert shas[1] not in cache.cached()
    with pytest.raises(DamagedAdapter, match="missing"):
        cache.get("subjects/9/lora.safetensors", shas[1])


def test_a_job_with_a_damaged_adapter_fails_clearly(settings: Settings, loras: list[bytes]) -> None:
    owner = make_user(settings)
    rex = make_subject(settings, owner, loras[0])
    storage_from_settings(settings).put(f"subjects/{rex}/lora.safetensors", loras[1])  # not what was trained
    job = run_sample(settings, PARAMS, owner, (rex,))
    assert job.status == "failed"
    assert (
        job.error
        == "The trained model for “rex” is damaged (its checksum does not match); please train it again."
    )
    assert pipelines._residents == {}


def test_merged_adapters_draw_what_peft_layers_draw(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Merging is only a faster way to apply the same adapters: two people at weights 1.0
    and 0.6 give the picture diffusers' own `set_adapters` gives, within float rounding.
    (Milder adapters than the other tests': at the fixtures' scale the random tiny model
    turns chaotic, and diffusers' own `fuse_lora` then drifts from its unfused layers.)"""
    import torch
    from diffusers import StableDiffusionPipeline

    from gpu_worker.lora_cache import AdapterRef
    from gpu_worker.resident_adapters import ResidentAdapters

    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"{seed}.safetensors")
        paths[-1].write_bytes(make_lora_bytes(tiny_model_dir, seed=seed, scale=0.2))

    def load() -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline.from_pretrained(
            tiny_model_dir, safety_checker=None, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def draw(pipe: StableDiffusionPipeline) -> np.ndarray:
        g = torch.Generator().manual_seed(3)
        return pipe("a photo of zwx dog", num_inference_steps=2, generator=g, output_type="np").images[0]

    theirs = load()
    for i, path in enumerate(paths):
        theirs.load_lora_weights(str(path), adapter_name=f"p{i}")
    theirs.set_adapters(["p0", "p1"], adapter_weights=[1.0, 0.6])
    ours = load()
    adapters = ResidentAdapters(ours, capacity=2)
    adapters.activate([AdapterRef("p0", paths[0], 1.0), AdapterRef("p1", paths[1], 0.6)])
    expected = draw(theirs)
    assert np.abs(draw(ours) - expected).max() < 1e-4
    adapters.activate([])
    assert np.abs(draw(ours) - expected).max() > 1e-3  # the adapters did matter


def test_an_adapter_for_another_model_fails_its_job_clearly_and_harms_nothing(
    settings: Settings, loras: list[bytes]
) -> None:
    """A whole file (its checksum matches) that was trained for another base model."""
    import torch
    from safetensors.torch import save

    from gpu_worker.layer_delta import MISMATCH

    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    foreign = save(
        {f"{layer}.lora_A.weight": torch.zeros(4, 999), f"{layer}.lora_B.weight": torch.zeros(64, 4)}
    )
    owner = make_user(settings)
    odd = make_subject(settings, owner, foreign, name="odd", token="sks")
    rex = make_subject(settings, owner, loras[0], name="rex", token="zwx")
    before = picture(settings, run_sample(settings, PARAMS, owner, (rex,)))
    job = run_sample(settings, PARAMS, owner, (odd,))
    assert job.status == "failed" and job.error == MISMATCH
    assert np.array_equal(picture(settings, run_sample(settings, PARAMS, owner, (rex,))), before)


def _layouts(model_dir: Path, folder: Path) -> dict[str, Path]:
    """One adapter in the layouts people bring: ours (diffusers), ours with LoRA metadata
    (alpha 8 at rank 4: scale 2), peft's keys, and kohya/A1111 with per-layer alphas."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from safetensors.torch import load, save_file

    ours = load(make_lora_bytes(model_dir, seed=4, scale=0.3))
    peft_keys = {
        k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in ours.items()
    }
    paths = {name: folder / f"{name}.safetensors" for name in ("diffusers", "metadata", "peft", "kohya")}
    save_file(ours, str(paths["diffusers"]))
    save_file(peft_keys, str(paths["peft"]))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    layers = {k.removeprefix("unet."): v for k, v in peft_keys.items()}
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=layers, unet_lora_adapter_metadata=config.to_dict(), safe_serialization=True
        )
        paths["metadata"].write_bytes((Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes())
    kohya = convert_state_dict_to_kohya(peft_keys)
    kohya = {k: torch.tensor(2.0) if k.endswith(".alpha") else v.contiguous() for k, v in kohya.items()}
    save_file(kohya, str(paths["kohya"]))
    return paths


def test_trained_files_are_read_directly_with_the_deltas_peft_gives(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The direct reader leaves the model untouched and gives, layer by layer, the deltas
    diffusers' load_lora_weights + peft give, in each layout (scales included)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from gpu_worker.lora_reader import read_unet_deltas
    from gpu_worker.resident_adapters import ResidentAdapters

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, requires_safety_checker=False
    )
    modules_before = [id(m) for m in pipe.unet.modules()]
    scales = {}
    for layout, path in _layouts(tiny_model_dir, tmp_path).items():
        direct = read_unet_deltas(pipe, path, layout)
        assert direct is not None, layout
        assert [id(m) for m in pipe.unet.modules()] == modules_before  # the model untouched
        general = ResidentAdapters(pipe, capacity=1)._read_with_peft(path, layout)
        theirs = {id(d.module): d.delta() for d in general}
        assert len(direct) == len(theirs) == 32, layout
        for d in direct:
            assert torch.allclose(d.delta(), theirs[id(d.module)], atol=1e-6), layout
        scales[layout] = float(direct[0].delta().norm())
    assert scales["metadata"] == pytest.approx(2 * scales["diffusers"])  # alpha 8 / rank 4
    assert scales["kohya"] == pytest.approx(0.5 * scales["diffusers"])  # alpha 2 / rank 4
    assert scales["peft"] == pytest.approx(scales["diffusers"])
