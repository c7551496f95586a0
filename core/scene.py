"""From the model's English scene to the diffusion prompt: name each subject as "token class".

The model refers to subjects by id and writes the scene in plain English ("my dog on the
moon", "Rex reading a newspaper"). Stable Diffusion only recognises a trained subject by
its rare token, so code — not the model — rewrites the first mention of each subject
(its name, "my dog", "the dog", a bare token) as "zwx dog", and `core.sample_request.
compose_prompt` then guarantees every subject is named even when no mention was found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.sample_request import compose_prompt

_DETERMINERS = r"(?:(?<![\w-])(?:my|our|your|his|her|their|the|a|an|this|that)\s+)?"


@dataclass(frozen=True)
class SubjectRef:
    token: str
    class_noun: str
    name: str = ""

    @property
    def phrase(self) -> str:
        return f"{self.token} {self.class_noun}"


def _word(text: str) -> str:
    return rf"(?<![\w-]){re.escape(text)}(?![\w-])"


def scene_prompt(scene: str, subjects: Sequence[SubjectRef]) -> str:
    """The diffusion prompt for `scene` with every subject named as "token class_noun".

    >>> scene_prompt("my dog on the moon", [SubjectRef("zwx", "dog", "Rex")])
    'a photo of zwx dog on the moon'
    """
    prompt = " ".join(scene.split())
    held: list[str] = []  # phrases already placed, hidden so a later subject can't match inside them

    def hold(text: str, phrase: str, pattern: str) -> tuple[str, int]:
        marker = f"\x00{len(held)}\x00"
        new, hits = re.subn(pattern, marker, text, count=1, flags=re.IGNORECASE)
        if hits:
            held.append(phrase)
        return new, hits

    for s in subjects:
        prompt, hits = hold(prompt, s.phrase, _word(s.phrase))
        if hits:
            continue
        # "Rex" / "my Rex" / "zwx" / "my dog" — the first mention only, so "a dog and
        # another dog" keeps the second as an ordinary dog.
        patterns = [_word(s.token)]
        if s.name:
            patterns.append(_DETERMINERS + _word(s.name) + rf"(?:\s+the\s+{re.escape(s.class_noun)})?")
        patterns.append(_DETERMINERS + _word(s.class_noun))
        for pattern in patterns:
            prompt, hits = hold(prompt, s.phrase, pattern)
            if hits:
                break
    for i, phrase in enumerate(held):
        prompt = prompt.replace(f"\x00{i}\x00", phrase)
    prompt = compose_prompt(prompt, [(s.token, s.class_noun) for s in subjects])
    # "zwx dog on the moon" reads best to SD as "a photo of zwx dog on the moon".
    for s in subjects:
        if prompt.lower().startswith(s.phrase.lower()):
            return "a photo of " + prompt
    return prompt
