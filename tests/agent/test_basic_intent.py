"""Basic mode's reading of messages, table-driven: phrasing in, what to do out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.basic_intent import Intent, Known, interpret

REX = Known(3, "Rex", "dog")
LUNA = Known(5, "Luna", "cat")
ONLY_REX = [REX]
BOTH = [REX, LUNA]

# (message, the person's subjects, expected intent)
CASES: list[tuple[str, list[Known], Intent]] = [
    ("put my dog on the moon", ONLY_REX, Intent("generate", (3,), "my dog on the moon")),
    ("Put my dog on the moon!", BOTH, Intent("generate", (3,), "my dog on the moon")),
    ("put my doggo on the moon", ONLY_REX, Intent("generate", (3,), "my doggo on the moon")),
    ("rex as a watercolor, 4 of them", BOTH, Intent("generate", (3,), "rex as a watercolor", n=4)),
    (
        "Rex as a watercolour, four of them please",
        ONLY_REX,
        Intent("generate", (3,), "Rex as a watercolour", n=4),
    ),
    ("draw rexx surfing a big wave", BOTH, Intent("generate", (3,), "Rex surfing a big wave")),
    ("put luna on the moon", BOTH, Intent("generate", (5,), "luna on the moon")),
    ("lunna in a spacesuit", BOTH, Intent("generate", (5,), "Luna in a spacesuit")),
    (
        "rex and luna at the beach, 2 pictures",
        BOTH,
        Intent("generate", (3, 5), "rex and luna at the beach", n=2),
    ),
    ("show me 3 pictures of my cat in paris", BOTH, Intent("generate", (5,), "my cat in paris", n=3)),
    ("can you make a picture of Rex wearing a hat", BOTH, Intent("generate", (3,), "Rex wearing a hat")),
    ("draw a castle at sunset", BOTH, Intent("generate", (), "a castle at sunset")),
    ("a lighthouse in a storm x2", [], Intent("generate", (), "a lighthouse in a storm", n=2)),
    ("put my cat on the moon", ONLY_REX, Intent("generate", (3,), "my cat on the moon")),
    ("put my parrot on the moon", BOTH, Intent("unknown_subject", noun="parrot")),
    ("again", BOTH, Intent("again")),
    ("agian please", BOTH, Intent("again")),
    ("another one", BOTH, Intent("again")),
    ("one more", ONLY_REX, Intent("again")),
    ("2 more of them", ONLY_REX, Intent("again", n=2)),
    ("bigger", BOTH, Intent("bigger")),
    ("make it biger", BOTH, Intent("bigger")),
    ("upscale that one", BOTH, Intent("bigger")),
    ("what can I do?", BOTH, Intent("help")),
    ("hi", [], Intent("help")),
    ("help", [], Intent("help")),
    ("what's my quota", BOTH, Intent("quota")),
    ("how many images do I have left today?", BOTH, Intent("quota")),
    ("quoat", BOTH, Intent("quota")),
    ("cancel", BOTH, Intent("cancel")),
    ("cancle it", BOTH, Intent("cancel")),
    ("cancel job #12", BOTH, Intent("cancel", job_id=12)),
    ("stop", BOTH, Intent("cancel")),
    ("put rex at the bus stop", BOTH, Intent("generate", (3,), "rex at the bus stop")),
    ("is it done yet?", BOTH, Intent("status")),
    ("status", BOTH, Intent("status")),
    ("is rex ready yet?", BOTH, Intent("status")),
    ("how's the training going", BOTH, Intent("status")),
    ("list my subjects", BOTH, Intent("subjects")),
    ("tell me a joke", BOTH, Intent("unknown")),
    ("train Rex as a dog", [], Intent("train", name="Rex", class_noun="dog")),
    (
        "train Ann as a woman, I have consent",
        [],
        Intent("train", name="Ann", class_noun="woman", consent=True),
    ),
]


@pytest.mark.parametrize(("text", "subjects", "expected"), CASES, ids=[c[0] for c in CASES])
def test_what_a_message_asks_for(text: str, subjects: list[Known], expected: Intent) -> None:
    assert interpret(text, subjects) == expected


PHOTO_CASES: list[tuple[str, Intent]] = [
    ("this is Rex, a dog", Intent("offer_train", name="Rex", class_noun="dog")),
    ("These are photos of Bella, my cat", Intent("offer_train", name="Bella", class_noun="cat")),
    ("meet Rex the dog", Intent("offer_train", name="Rex", class_noun="dog")),
    ("my dog Max", Intent("offer_train", name="Max", class_noun="dog")),
    ("this is rex", Intent("ask_class", name="Rex")),
    ("", Intent("ask_name")),
    ("look!", Intent("ask_name")),
    ("train them as Rex, a dog", Intent("train", name="Rex", class_noun="dog")),
    (
        "this is Ann, a woman. I have her permission",
        Intent("offer_train", name="Ann", class_noun="woman", consent=True),
    ),
]


@pytest.mark.parametrize(("text", "expected"), PHOTO_CASES, ids=[c[0] or "(no text)" for c in PHOTO_CASES])
def test_photos_with_an_introduction(text: str, expected: Intent) -> None:
    assert interpret(text, BOTH, has_photos=True) == expected


OFFER = "Got 4 photos of Rex (a dog). Say “train Rex as a dog” (or just “yes”) to start training on them."


@pytest.mark.parametrize("text", ["yes", "Yes please", "ok", "sure, go ahead", "yep do it"])
def test_yes_accepts_the_offer_just_made(text: str) -> None:
    assert interpret(text, [], offer=OFFER) == Intent("train", name="Rex", class_noun="dog")


PHOTO_QUESTION = (
    "1 of 4 photos is too dark — 4 photos will be used.\n• 3.jpg: This photo is too dark — a photo in "
    "better light shows more of your subject.\nTrain anyway?\nSay “train Rex as a dog anyway” to "
    "train on them as they are, or send other photos."
)


@pytest.mark.parametrize("text", ["yes", "train anyway", "Train anyway!", "ok, train Rex as a dog anyway"])
def test_yes_to_the_photo_checks_question_trains_anyway(text: str) -> None:
    assert interpret(text, [], offer=PHOTO_QUESTION) == Intent(
        "train", name="Rex", class_noun="dog", anyway=True
    )
    assert not interpret("yes", [], offer=OFFER).anyway  # an ordinary offer: the check still runs


def test_yes_without_an_offer_is_not_a_training() -> None:
    assert interpret("yes", BOTH, offer="Your subjects: Rex (dog).").kind != "train"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_never_raises_on_any_text(text: str, has_photos: bool) -> None:
    intent = interpret(text, BOTH, has_photos=has_photos, offer=OFFER)
    assert 0 <= intent.n <= 8 and set(intent.subject_ids) <= {3, 5}
