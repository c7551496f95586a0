"""Subject names and class nouns: the one check every intake path uses (/train on Discord
and Slack, the playground form, `dreambot train`, the agent's `train_subject` tool, all
through `core.subjects.start_training`), and what a class noun says about the subject.

A name is what a person calls their subject ("Rex", "Aunt May"); a class noun is a short
noun phrase saying what it is ("dog", "young woman", "coffee mug"). The class noun goes
into every training and sampling prompt and both go into the agent's context, so both are
held to plain words: letters (digits too in a name), a few separators, no line breaks,
markup, links or instructions. Refusals are `NameRefused`, one sentence saying what is
allowed.
"""

from __future__ import annotations

import re
import unicodedata

from core.errors import UserFacingError

NAME_MAX = 40
CLASS_MAX = 40  # the column holds 64; the platforms' forms allow 40
CLASS_MAX_WORDS = 5  # "me and my little sister"
DEFAULT_CLASS = "object"

NAME_RULE = (
    f"A name can be up to {NAME_MAX} letters, digits, spaces, hyphens, apostrophes or dots, "
    "like “Rex” or “Aunt May”."
)
CLASS_RULE = (
    f"Describe it in up to {CLASS_MAX_WORDS} plain words, like “dog”, “young woman” or “coffee mug” "
    f"(letters, spaces, hyphens, apostrophes; {CLASS_MAX} characters at most)."
)

_NAME = re.compile(rf"\w[\w .'-]{{0,{NAME_MAX - 1}}}")
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")  # letters, joined by ' or - ("mother-in-law")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})
# Words of instructions, not of things: "dog. Ignore previous instructions and …".
_INSTRUCTION_WORDS = {
    "ignore", "disregard", "instruction", "instructions", "prompt", "prompts", "override",
    "jailbreak", "pretend", "previous", "reveal", "respond", "execute",
}  # fmt: skip

PET_NOUNS = {
    "dog", "cat", "puppy", "kitten", "horse", "pony", "rabbit", "bunny", "bird", "parrot",
    "budgie", "hamster", "ferret", "chinchilla", "turtle", "tortoise", "goldfish", "pet",
}  # fmt: skip
PERSON_NOUNS = {
    "person", "man", "woman", "boy", "girl", "child", "kid", "kiddo", "baby", "infant", "toddler",
    "guy", "lady", "gentleman", "dude", "lad", "lass", "people", "human", "adult", "teen",
    "teenager", "me", "myself", "us", "him", "himself", "herself", "selfie", "self", "portrait",
    "husband", "wife", "son", "daughter", "mother", "father", "mom", "mum", "mommy", "mummy",
    "mama", "dad", "daddy", "papa", "parent", "sister", "brother", "sibling", "twin", "grandma",
    "grandpa", "granny", "grandmother", "grandfather", "grandparent", "grandson", "granddaughter",
    "grandchild", "grandkid", "aunt", "auntie", "uncle", "cousin", "niece", "nephew", "family",
    "friend", "bestie", "girlfriend", "boyfriend", "partner", "fiance", "fiancee", "bride",
    "groom", "couple", "colleague", "coworker", "boss", "student", "policeman", "policewoman",
    "fireman", "businessman", "businesswoman",
}  # fmt: skip
_IRREGULAR_PLURALS = {
    "women": "woman", "men": "man", "children": "child", "grandchildren": "grandchild",
    "wives": "wife", "folks": "folk", "gentlemen": "gentleman",
}  # fmt: skip


class NameRefused(UserFacingError):
    """A subject name or class noun outside the rules; the message says what is allowed."""


def _plain(raw: str, rule: str) -> str:
    """NFKC text with one space between words; line breaks and other controls are refused."""
    text = unicodedata.normalize("NFKC", raw).translate(_APOSTROPHES).strip()
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise NameRefused(rule)
    return " ".join(text.split())


def _instructs(words: list[str]) -> bool:
    return any(w.strip(".'-").lower() in _INSTRUCTION_WORDS for w in words)


def subject_name(raw: str) -> str:
    """The name to store, or `NameRefused`."""
    name = _plain(raw, NAME_RULE)
    if not _NAME.fullmatch(name) or _instructs(name.split()):
        raise NameRefused(NAME_RULE)
    return name


def class_noun(raw: str) -> str:
    """The class noun to store (lower case; empty means "object"), or `NameRefused`."""
    noun = _plain(raw, CLASS_RULE).lower()
    if not noun:
        return DEFAULT_CLASS
    words = noun.split(" ")
    if (
        len(noun) > CLASS_MAX
        or len(words) > CLASS_MAX_WORDS
        or not all(_WORD.fullmatch(w) for w in words)
        or _instructs(words)
    ):
        raise NameRefused(CLASS_RULE)
    return noun


def subject_names(name: str, noun: str) -> tuple[str, str]:
    """Both checks at once: (name, class noun) as they are stored, or `NameRefused`."""
    return subject_name(name), class_noun(noun)


def _forms(word: str) -> set[str]:
    """The word, its singular guesses and its parts: "sisters" → sister, "dad's" → dad."""
    word = word.lower().removesuffix("'s").removesuffix("'")
    forms = {word, *word.split("-")}
    for w in list(forms):
        forms.add(_IRREGULAR_PLURALS.get(w, w))
        if w.endswith("ies"):
            forms.add(w[:-3] + "y")
        if w.endswith("s"):
            forms.update({w[:-1], w[:-2]})
    return forms


def kind_of(class_noun: str) -> str:
    """object | pet | person: picks the training preset, and a person needs consent.

    A phrase is about a person when any word in it is a person noun ("young woman",
    "my dad", "me and my sister", "grandmas"); that check comes first, so "me and my dog"
    asks for consent."""
    words = [f for w in class_noun.split() for f in _forms(w)]
    if any(w in PERSON_NOUNS for w in words):
        return "person"
    return "pet" if any(w in PET_NOUNS for w in words) else "object"
