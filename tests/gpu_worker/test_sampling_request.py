"""The sample request, the prompt rule, image files and previews: no pipeline needed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from core.image_codec import fit_under, png_with_metadata, read_png_metadata
from core.sample_request import (
    InvalidSampleRequest,
    SampleRequest,
    compose_prompt,
    parse_sample_request,
)
from gpu_worker.preview import latent_preview


def test_defaults() -> None:
    req = parse_sample_request({"prompt": "a dog on the moon"})
    assert (req.n, req.steps, req.guidance_scale, req.scheduler) == (1, 30, 7.5, "dpmpp_2m_karras")
    assert req.width is None and req.height is None and req.seed is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"prompt": "x", "steps": 0}, "steps must be between 1 and 100"),
        ({"prompt": "x", "guidance_scale": 100}, "guidance must be between 1 and 20"),
        ({"prompt": "x", "width": 13}, "width must be a multiple of 8"),
        ({"prompt": "x", "height": 4096}, "height must be a multiple of 8 from 64 to 1024"),
        ({"prompt": "x", "n": 50}, "the number of images must be between 1 and 8"),
        ({"prompt": "x", "scheduler": "plms"}, "the scheduler must be one of dpmpp_2m_karras, euler_a, ddim"),
        ({"prompt": "x", "seed": -1}, "the seed must be a whole number"),
        ({"prompt": ""}, "please describe the picture"),
        ({"prompt": "x", "variation_of": 1, "upscale_of": 2}, "not both"),
        ({"prompt": "x", "colour": "red"}, "I don't know the option 'colour'"),
        ({"upscale_of": 3, "width": 512}, "leave width/height out"),
    ],
)
def test_bad_requests_are_explained(params: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidSampleRequest) as err:
        parse_sample_request(params)
    message = str(err.value)
    assert message.startswith("I can't make that picture: ")
    assert words in message
    assert "pydantic" not in message and "Input should" not in message


def test_several_problems_are_listed_once_each() -> None:
    with pytest.raises(InvalidSampleRequest) as err:
        parse_sample_request({"prompt": "x", "steps": 0, "n": 0})
    assert "steps" in str(err.value) and "number of images" in str(err.value)


def test_seeds_are_consecutive_from_the_request_seed_or_a_drawn_one() -> None:
    assert SampleRequest(prompt="x", n=3, seed=10).seeds(base=999) == [10, 11, 12]
    assert SampleRequest(prompt="x", n=2).seeds(base=999) == [999, 1000]


def test_variation_and_upscale_may_reuse_the_earlier_prompt() -> None:
    assert parse_sample_request({"variation_of": 4}).effective_strength == 0.6
    assert parse_sample_request({"upscale_of": 4}).effective_strength == 0.35


@pytest.mark.parametrize(
    ("prompt", "subjects", "expected"),
    [
        ("zwx dog on the moon", [("zwx", "dog")], "zwx dog on the moon"),
        ("zwx on the moon", [("zwx", "dog")], "zwx dog on the moon"),
        ("on the moon", [("zwx", "dog")], "a photo of zwx dog, on the moon"),
        ("", [("zwx", "dog")], "a photo of zwx dog"),
        ("zwx and a cat", [("zwx", "dog"), ("sks", "cat")], "a photo of sks cat, zwx dog and a cat"),
        ("a dog", [], "a dog"),
    ],
)
def test_prompt_names_every_subject(prompt: str, subjects: list[tuple[str, str]], expected: str) -> None:
    assert compose_prompt(prompt, subjects) == expected


def _noise_png(size: int = 192) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_png_metadata_round_trips() -> None:
    meta = {"prompt": "a photo of zwx dog", "seed": 42, "steps": 30, "scheduler": "euler_a"}
    data = png_with_metadata(Image.new("RGB", (16, 16), "red"), meta)
    assert read_png_metadata(data) == {k: str(v) for k, v in meta.items()}
    with Image.open(io.BytesIO(data)) as im:
        assert "Seed: 42" in im.text["parameters"] and im.text["parameters"].startswith("a photo of zwx dog")


def test_reencoding_fits_a_byte_limit() -> None:
    data = _noise_png()
    assert fit_under(data, len(data)).data == data  # fits: untouched
    small = fit_under(data, 12_000)
    assert len(small.data) <= 12_000 and small.format in ("webp", "jpeg")
    with Image.open(io.BytesIO(small.data)) as im:
        assert im.format.lower() == small.format and im.size == (small.width, small.height)
    tiny = fit_under(data, 1_500)  # only a smaller picture fits this
    assert len(tiny.data) <= 1_500 and tiny.width < 192
    with pytest.raises(ValueError):
        fit_under(data, 10)


def test_latent_preview_is_a_small_jpeg() -> None:
    latent = np.random.default_rng(1).standard_normal((4, 32, 48)).astype(np.float32)
    raw = base64.b64decode(latent_preview(latent, max_side=64))
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "JPEG" and im.size == (64, 43)
    with pytest.raises(ValueError):
        latent_preview(np.zeros((3, 8, 8)))
