"""The diffusion prompt names every subject as "token class" (core.scene)."""

from __future__ import annotations

import pytest

from core.scene import SubjectRef, scene_prompt

REX = SubjectRef("zwx", "dog", "Rex")
BELLA = SubjectRef("sks", "dog", "Bella")


@pytest.mark.parametrize(
    ("scene", "subjects", "expected"),
    [
        ("my dog on the moon, earth in the sky", [REX], "a photo of zwx dog on the moon, earth in the sky"),
        ("Rex reading a newspaper", [REX], "a photo of zwx dog reading a newspaper"),
        ("a watercolor painting of my dog", [REX], "a watercolor painting of zwx dog"),
        ("zwx on the moon", [REX], "a photo of zwx dog on the moon"),
        ("a photo of zwx dog on the moon", [REX], "a photo of zwx dog on the moon"),
        ("on the moon", [REX], "a photo of zwx dog, on the moon"),
        ("my dog and my other dog playing", [REX, BELLA], "a photo of zwx dog and my other sks dog playing"),
        ("Bella and Rex on a beach", [REX, BELLA], "a photo of sks dog and zwx dog on a beach"),
        ("a cat at a hotdog stand", [REX], "a photo of zwx dog, a cat at a hotdog stand"),
        ("a castle at dusk", [], "a castle at dusk"),
    ],
)
def test_scene_prompt_names_every_subject_by_token_and_class(scene, subjects, expected) -> None:
    assert scene_prompt(scene, subjects) == expected
