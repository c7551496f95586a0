"""`dreambot train` then `dreambot generate` from a terminal, in real subprocesses on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from core.settings import Settings
from tests.helpers.profile import settings_env
from tests.helpers.training import FAST, photo_bytes

pytestmark = pytest.mark.slow


def dreambot(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_train_then_generate_from_the_terminal(sqlite_settings: Settings, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**FAST, "validation_images": 1, "validation_steps": 2}))
    env = settings_env(sqlite_settings.model_copy(update={"base_model": str(tiny_model_dir),
                                                          "train_config": config}))  # fmt: skip
    photos = []
    for i in range(3):
        path = tmp_path / f"rex{i}.jpg"
        path.write_bytes(photo_bytes(i))
        photos.append(str(path))

    # --yes: the photo check finds these small photos too small, and would ask.
    trained = dreambot(env, tmp_path, "train", *photos, "--name", "rex", "--class", "dog", "--set", "lora_rank=4",
                       "--out", str(tmp_path / "validation"), "--yes")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    lines = trained.stdout.strip().splitlines()
    assert lines[0].startswith("rex (") and "is ready: subjects/" in lines[0]
    assert len(lines) == 2 and Path(lines[1]).is_file()  # the one validation picture

    made = dreambot(env, tmp_path, "generate", "rex on the moon", "--subject", "rex", "-n", "2", "--steps", "2",
                    "--seed", "7", "--out", str(tmp_path / "out"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    files = [Path(p) for p in made.stdout.split()]
    assert len(files) == 2
    for f in files:
        with Image.open(f) as image:
            assert image.size == (64, 64)
            assert image.text["dreambot:prompt"].endswith("dog on the moon")  # "rex" became its token
            assert image.text["dreambot:seed"] in {"7", "8"}

    unknown = dreambot(env, tmp_path, "generate", "a cat", "--subject", "nobody")
    assert unknown.returncode == 1 and "no subject called" in unknown.stderr
