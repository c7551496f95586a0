"""TrainConfig: presets, layers (deployment file < overrides), files, --set, friendly errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from core.train_config import PRESETS, TrainConfig, TrainConfigError, build_config, parse_set


def test_presets_per_kind_and_derived_values() -> None:
    pet, person, obj = (build_config(subject_kind=k) for k in ("pet", "person", "object"))
    assert (pet.random_flip, obj.random_flip) == (True, False)
    assert person.lora_rank == PRESETS["person"]["lora_rank"] > obj.lora_rank
    assert (
        obj.method == "lora"
        and obj.unet_lr() == 1e-4
        and obj.prior_preservation
        and obj.prior_loss_weight == 1
    )
    assert build_config(overrides={"method": "full"}).unet_lr() == 5e-6
    # steps scale with the photos, clamped to the preset's range
    assert (obj.total_steps(1), obj.total_steps(6), obj.total_steps(30)) == (400, 600, 1000)
    resolved = obj.resolved(n_photos=5, resolution=512)
    assert (resolved.steps, resolved.resolution, resolved.learning_rate, resolved.lora_alpha) == (
        500,
        512,
        1e-4,
        8,
    )
    assert build_config(overrides={"resolution": 64}).resolved(n_photos=3, resolution=512).resolution == 64
    assert obj.prompts("zwx", "mug") == ("a photo of zwx mug", "a photo of mug")


def test_layers_deployment_file_then_job_overrides(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("gradient_checkpointing: true\nresolution: 64\nsteps: 10\nrandom_flip: false\n")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"steps": 20, "lora_rank": 4}))
    cfg = build_config(
        subject_kind="pet", deployment_file=deploy, files=[job_file], overrides={"lora_rank": 2}
    )
    assert cfg.subject_kind == "pet"
    assert cfg.random_flip is False  # the operator's file beats the pet preset
    assert (cfg.gradient_checkpointing, cfg.resolution, cfg.steps, cfg.lora_rank) == (True, 64, 20, 2)


def test_parse_set_reads_yaml_values() -> None:
    assert parse_set(
        ["steps=10", "random_flip=true", "lora_targets=[to_q, to_v]", "seed=-3", "snr_gamma="]
    ) == {
        "steps": 10,
        "random_flip": True,
        "lora_targets": ["to_q", "to_v"],
        "seed": -3,
        "snr_gamma": None,
    }
    with pytest.raises(TrainConfigError, match="key=value"):
        parse_set(["steps"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stepz": 10}, "stepz: is not a training setting"),
        ({"method": "dora"}, "method"),
        ({"steps": -1}, "steps"),
        ({"min_steps": 900, "max_steps": 100}, "min_steps"),
        ({"instance_prompt": "a {subject}"}, "instance_prompt"),
    ],
)
def test_bad_values_are_explained(overrides: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(TrainConfigError, match=message):
        build_config(overrides=overrides)


def test_bad_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="cannot read"):
        build_config(files=[tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1,\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        build_config(files=[broken])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(TrainConfigError, match="mapping"):
        build_config(files=[listy])


def test_config_module_needs_no_torch() -> None:
    assert TrainConfig().method == "lora"
    import subprocess

    code = "import sys, core.train_config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


def test_validation_and_preview_settings() -> None:
    cfg = build_config()
    assert (cfg.validation_images, cfg.validation_steps, cfg.preview_interval) == (4, 25, 30.0)
    assert cfg.validation_text("zwx", "mug") == "a photo of zwx mug"
    short = build_config(overrides={"validation_prompt": "{token} {class} on the moon"})
    assert short.validation_text("zwx", "dog") == "zwx dog on the moon"  # {class}: short for {class_noun}
    with pytest.raises(TrainConfigError, match="validation_prompt"):
        build_config(overrides={"validation_prompt": "a photo of {name}"})
    with pytest.raises(TrainConfigError, match="validation_images"):
        build_config(overrides={"validation_images": -1})
