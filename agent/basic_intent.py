"""Basic mode's reading of a message: a few common requests, recognised without a model.

`interpret` is pure: the words of one message plus what the person owns in, an `Intent`
out (what to do, for which subjects, how many pictures). It tolerates small typos
("agian", "biger", "rexx") by comparing words with `difflib`, and it prefers doing
nothing clever to guessing: anything it does not recognise is `unknown`, and basic mode
answers that with what it does understand. `agent/basic_mode.py` carries intents out.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

MAX_IMAGES = 8  # GenerateImagesArgs.n's limit

Kind = Literal[
    "generate",  # subject_ids (maybe none), scene, n
    "again",  # the last request once more, new seeds (n: how many; 0 as before)
    "bigger",  # upscale the last picture
    "help",
    "quota",
    "cancel",  # job_id, or the newest unfinished job
    "status",
    "subjects",
    "offer_train",  # photos with "this is Rex, a dog": name, class_noun
    "ask_name",  # photos, but who is it?
    "ask_class",  # photos of "Rex", but what is Rex?
    "train",  # name, class_noun, consent, anyway
    "unknown_subject",  # "my cat" when no subject is a cat: noun
    "unknown",
]


@dataclass(frozen=True)
class Known:
    """One subject as the parser may refer to it."""

    id: int
    name: str
    class_noun: str
    trained: bool = True


@dataclass(frozen=True)
class Intent:
    kind: Kind
    subject_ids: tuple[int, ...] = ()
    scene: str = ""
    n: int = 0  # pictures asked for; 0: not said (one, or as many as last time)
    job_id: int | None = None
    name: str = ""
    class_noun: str = ""
    consent: bool = False
    anyway: bool = False  # train despite what the photo check pointed out
    noun: str = ""


NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
_NUM = r"(\d+|" + "|".join(NUMBERS) + r"|a couple|a few)"
_COUNT = re.compile(
    rf"\b{_NUM}\s+(?:more\s+)?(?:of\s+(?:them|those|these|it)|images?|pictures?|pics?|photos?|versions?|"
    r"variations?|copies|shots|times)\b|\bx\s?(\d)\b|\b(\d)\s?x\b",
    re.IGNORECASE,
)
_COMMAND = re.compile(
    r"^(?:(?:please|pls|can you|could you|would you|will you|i want|i'?d like|let'?s|now)\s+)*"
    r"(?:(?:put|draw|make|show|generate|create|paint|render|imagine|give|send|do)\s+(?:me\s+|us\s+)?)?"
    r"(?:(?:another|one more)\s+(?:one\s+)?(?:of\s+)?)?"
    rf"(?:(?:(?:a|an|some|{_NUM})\s+)?(?:(?:new|more)\s+)?"
    r"(?:pictures?|photos?|images?|pics?|paintings?|drawings?|portraits?|versions?)\s+(?:of\s+)?)?",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")

CANCEL = {"cancel", "abort", "stop", "halt"}
QUOTA = {"quota", "quotas", "limit", "limits", "usage", "allowance", "left"}
STATUS = {"status", "progress", "ready", "done", "finished", "jobs"}
SUBJECTS = {"subjects", "models", "subject", "list"}
BIGGER = {"bigger", "larger", "upscale", "upscaled", "enlarge", "upsize", "hires", "hi-res", "sharper"}
AGAIN = {"again", "another", "reroll", "redo", "more", "retry", "repeat"}
YES = {"yes", "yeah", "yep", "yup", "ok", "okay", "sure", "go", "start", "please", "do", "it", "ahead"}
ANYWAY = {"train", "anyway", "anyhow", "regardless"}  # "train anyway": yes to the photo check's question
GREETING = {"hi", "hello", "hey", "hiya", "yo", "help"}
VERBS = {"put", "draw", "make", "show", "generate", "create", "paint", "render", "imagine", "picture",
         "photo", "image", "pic", "sketch", "portrait", "give"}  # fmt: skip
SCENE_MARKERS = re.compile(
    r"\b(as an?|in the style|on (?:the|a)|at (?:the|a)|in (?:the|a|an)|wearing|with (?:a|an|the)|under|"
    r"riding|surfing|flying|swimming|dressed)\b",
    re.IGNORECASE,
)
HELP = re.compile(
    r"\b(what can (?:i|you) do|what do you do|how does (?:this|it) work|how do i|commands|help|"
    r"what can i ask|what are you)\b",
    re.IGNORECASE,
)
QUOTA_PHRASES = re.compile(r"\bhow many\b.*\b(images?|pictures?|trainings?|left)\b", re.IGNORECASE)
STATUS_PHRASES = re.compile(
    r"\b(is it (?:done|ready|finished)|how(?:'s| is) (?:the |my )?(?:training|job)|my jobs|what'?s running|"
    r"(?:is|are) (?:\w+ ){1,2}(?:ready|done|finished|trained)(?: yet)?\s*\??$)",
    re.IGNORECASE,
)
SUBJECT_PHRASES = re.compile(
    r"\b(my subjects|list (?:my )?subjects|which subjects|what subjects|my models|who do you know)\b",
    re.IGNORECASE,
)
CONSENT = re.compile(
    r"\b(consent|i have the right|have (?:their |her |his )?permission|they agreed|(?:it'?s|that'?s|this is) me)\b",
    re.IGNORECASE,
)
_INTRO = re.compile(
    r"\b(?:this is|these are|it'?s|meet|here'?s|here is|here are|that'?s|photos? of|pictures? of|pics? of|"
    r"called|named|train(?:\s+(?:them|these|it|on them))?(?:\s+as)?)\s+(?:my\s+|our\s+)?"
    r"(?P<name>[^\W\d_][\w'-]*)(?:\s*(?:,|\(|-|as|the|is)?\s*(?:an?|my|our|the)?\s+(?P<class>[^\W\d_][\w-]*))?",
    re.IGNORECASE,
)
_MY_CLASS_NAME = re.compile(r"\b(?:my|our)\s+(?P<class>[a-z]+)\s*,?\s+(?P<name>[A-Z][\w'-]*)")
PHOTO_QUESTION = "Train anyway?"  # how the photo check's question ends (core.photo_quality)
_TRAIN = re.compile(r"\b(?:train|learn|teach)\b", re.IGNORECASE)
NOT_NAMES = {"photos", "photo", "pictures", "picture", "pics", "some", "a", "an", "the", "my", "our", "them",
             "these", "it", "me", "him", "her", "as", "on", "of", "is", "anyway"}  # fmt: skip
_POSSESSIVE_NOUN = re.compile(r"\b(?:my|our)\s+(?P<noun>[a-z]+)\b", re.IGNORECASE)
# "my own style", "my favourite colour": possessives that name no subject.
NOT_SUBJECT_NOUNS = {"own", "favourite", "favorite", "style", "idea", "photos", "photo", "pictures",
                     "picture", "images", "image", "last", "quota", "jobs", "job", "subjects", "models"}  # fmt: skip


def words_of(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def close(word: str, vocab: set[str] | list[str], cutoff: float = 0.8) -> str | None:
    """`word` itself if in `vocab`, else a near spelling of 4+ letters ("agian" → "again")."""
    if word in vocab:
        return word
    if len(word) < 4:
        return None
    found = difflib.get_close_matches(word, list(vocab), n=1, cutoff=cutoff)
    return found[0] if found else None


def has(words: list[str], vocab: set[str]) -> bool:
    return any(close(w, vocab) for w in words)


def count_of(text: str) -> tuple[int | None, tuple[int, int] | None]:
    """How many pictures the text asks for, and where it said so."""
    m = _COUNT.search(text)
    if not m:
        return None, None
    raw = (m.group(1) or m.group(2) or m.group(3) or "").lower()
    value = NUMBERS.get(raw) or {"a couple": 2, "a few": 3}.get(raw) or (int(raw) if raw.isdigit() else 1)
    return max(1, min(MAX_IMAGES, value)), m.span()


def named_subjects(text: str, subjects: list[Known]) -> tuple[list[Known], dict[str, str]]:
    """Subjects the text names, in order of mention, and misspellings to correct ("rexx" → "Rex")."""
    words = words_of(text)
    hits: list[tuple[int, Known]] = []
    fixes: dict[str, str] = {}
    for s in subjects:
        name = s.name.lower()
        m = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text.lower())
        if m:
            hits.append((m.start(), s))
            continue
        if " " in name or len(name) < 3:
            continue
        for w in words:
            if len(w) >= 4 and difflib.SequenceMatcher(None, w, name).ratio() >= 0.8:
                hits.append((text.lower().find(w), s))
                fixes[w] = s.name
                break
    hits.sort(key=lambda h: h[0])
    return list(dict.fromkeys(s for _, s in hits)), fixes


def by_class(text: str, subjects: list[Known]) -> list[Known]:
    """Subjects named by their class noun ("my dog"), when exactly one has that class."""
    words = words_of(text)
    out = []
    for noun in dict.fromkeys(s.class_noun.lower() for s in subjects):
        if noun in words or f"{noun}s" in words:
            same = [s for s in subjects if s.class_noun.lower() == noun]
            if len(same) == 1:
                out.append(same[0])
    return out


def scene_of(text: str, fixes: dict[str, str]) -> str:
    """The scene to draw: the request without its command words, count or politeness."""
    text = _COMMAND.sub("", text.strip(" ,.!?;:"), count=1)
    _, span = count_of(text)
    if span:
        text = text[: span[0]] + text[span[1] :]
    for wrong, right in fixes.items():
        text = re.sub(rf"(?<![\w-]){re.escape(wrong)}(?![\w-])", right, text, flags=re.IGNORECASE)
    text = re.sub(r"\s*,\s*(?:,\s*)*", ", ", text)
    text = re.sub(r"\b(?:please|pls)\b", "", text, flags=re.IGNORECASE)
    return " ".join(text.split()).strip(" ,.!?;:")


def introduction(text: str) -> tuple[str, str]:
    """(name, class noun) from "this is Rex, a dog" / "my dog Rex" / "train Rex as a dog"."""
    m = _MY_CLASS_NAME.search(text)
    if m:
        return m.group("name").capitalize(), m.group("class").lower()
    pos = 0
    while m := _INTRO.search(text, pos):
        name = m.group("name")
        if name.lower() in NOT_NAMES:  # "these are photos of Bella": look on from "photos"
            pos = m.start("name")
            continue
        noun = (m.group("class") or "").lower()
        return name[:1].upper() + name[1:], "" if noun in NOT_NAMES else noun
    return "", ""


def interpret(text: str, subjects: list[Known], *, has_photos: bool = False, offer: str = "") -> Intent:
    """What the message asks for. `offer` is basic mode's previous reply (a training offer
    it made, answered now with "yes")."""
    words = words_of(text)
    consent = bool(CONSENT.search(text))
    anyway = "anyway" in words
    if _TRAIN.search(text) and not has_photos:
        name, noun = introduction(text)
        if name and noun:
            return Intent("train", name=name, class_noun=noun, consent=consent, anyway=anyway)
    if has_photos:
        name, noun = introduction(text)
        if not name:
            return Intent("ask_name")
        if not noun:
            return Intent("ask_class", name=name)
        if _TRAIN.search(text):
            return Intent("train", name=name, class_noun=noun, consent=consent)
        return Intent("offer_train", name=name, class_noun=noun, consent=consent)
    agreed = bool(words) and all(close(w, YES | ANYWAY) for w in words)
    if offer and (agreed or (consent and len(words) <= 8)):
        name, noun = introduction(offer)
        if name and noun:  # an offer that was the photo check's question: "yes" trains anyway
            anyway = anyway or PHOTO_QUESTION in offer
            return Intent("train", name=name, class_noun=noun, consent=consent, anyway=anyway)

    if STATUS_PHRASES.search(text):  # "is Rex ready yet?" names Rex but asks about the training
        return Intent("status")
    named, fixes = named_subjects(text, subjects)
    if not named:
        simple = _simple(text, words)
        if simple is not None:
            return simple
    n, _ = count_of(text)
    chosen = named or by_class(text, subjects)
    if not chosen:
        m = _POSSESSIVE_NOUN.search(text)
        noun = m.group("noun").lower() if m else ""
        if noun and noun not in NOT_SUBJECT_NOUNS:
            trained = [s for s in subjects if s.trained]
            if len(subjects) == 1:
                chosen = subjects
            elif not trained or noun not in {s.class_noun.lower() for s in subjects}:
                return Intent("unknown_subject", noun=noun)
    if not (chosen or has(words, VERBS) or SCENE_MARKERS.search(text)):
        return Intent("unknown")
    scene = scene_of(text, fixes)
    if not scene or scene.lower() in {"it", "them", "that"}:
        scene = " and ".join(s.name for s in chosen)
    if not scene:
        return Intent("unknown")
    return Intent("generate", subject_ids=tuple(s.id for s in chosen), scene=scene, n=n or 0)


def _simple(text: str, words: list[str]) -> Intent | None:
    """Requests about the bot itself rather than a picture; None when it is none of them."""
    if not words:
        return Intent("help")
    first = words[:3]
    if has(first, CANCEL) and len(words) <= 6:
        job = re.search(r"#?\b(\d+)\b", text)
        return Intent("cancel", job_id=int(job.group(1)) if job else None)
    if HELP.search(text) or (len(words) <= 3 and has(words, GREETING)):
        return Intent("help")
    if QUOTA_PHRASES.search(text) or (has(words, QUOTA - {"left"}) and len(words) <= 8):
        return Intent("quota")
    if SUBJECT_PHRASES.search(text):
        return Intent("subjects")
    if STATUS_PHRASES.search(text) or (has(words, STATUS) and len(words) <= 5):
        return Intent("status")
    if has(words, BIGGER) and len(words) <= 8:
        return Intent("bigger")
    if has(words, AGAIN) and len(words) <= 8 and not SCENE_MARKERS.search(text):
        n, _ = count_of(text)
        return Intent("again", n=n or 0)  # 0: as many as last time
    return None
