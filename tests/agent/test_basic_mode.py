"""Chat without an LLM, and with a broken one: basic mode acts through the agent's tools,
and every answer — a failure's polite sentence too — is stored in the conversation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from agent.basic_mode import BASICS, MEANWHILE, NO_LLM_NOTE
from agent.chat_mode import chat_status, llm_configured
from agent.llm import ACCOUNT, UNAVAILABLE
from agent.loop import CONFUSED, AgentReply
from core.db import session_scope
from core.models import ConversationMessage, Job, Subject
from core.settings import Settings
from tests.agent.conftest import World, add_conversation, add_subject, add_user, photo, with_llm
from tests.agent.test_agent import ask
from tests.agent.test_tools import finished_image
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.photos import face_jpeg, jpeg


@pytest.fixture
def plain(sqlite_settings: Settings) -> Iterator[Settings]:
    """The defaults of a fresh clone: OpenRouter's URL and no key, so no LLM."""
    assert not llm_configured(sqlite_settings)
    yield sqlite_settings


@pytest.fixture
def people(plain: Settings) -> World:
    user = add_user(plain, "alice")
    return World(user, add_user(plain, "mallory"), add_conversation(plain, user))


async def say(settings: Settings, world: World, text: str, **kw: object) -> AgentReply:
    return await ask(settings, world, text, event=f"web:{text}", **kw)  # type: ignore[arg-type]


def jobs_of(settings: Settings) -> list[Job]:
    with session_scope(settings) as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def thread(settings: Settings, world: World) -> list[tuple[str, str]]:
    with session_scope(settings) as s:
        rows = s.scalars(
            select(ConversationMessage)
            .where(ConversationMessage.conversation_id == world.conversation_id)
            .order_by(ConversationMessage.id)
        )
        return [(m.role, m.content) for m in rows]


async def test_put_my_dog_on_the_moon_without_an_llm(plain: Settings, people: World) -> None:
    rex = add_subject(plain, people.user_id, "Rex", "zwx", "dog")
    reply = await say(plain, people, "put my dog on the moon")

    [job] = jobs_of(plain)
    assert job.kind == "sample" and job.owner_id == people.user_id
    assert job.params["prompt"] == "a photo of zwx dog on the moon" and job.params["subject_ids"] == [rex]
    assert reply.job_ids == [job.id] and reply.model_calls == 0
    assert "Basic mode" in reply.text and "DREAMBOT_LLM_API_KEY" in reply.text
    assert thread(plain, people) == [("user", "put my dog on the moon"), ("assistant", reply.text)]


async def test_watercolor_again_and_bigger(plain: Settings, people: World) -> None:
    rex = add_subject(plain, people.user_id, "Rex", "zwx", "dog")
    await say(plain, people, "rex as a watercolor, 4 of them")
    [first] = jobs_of(plain)
    assert first.params["n"] == 4 and first.params["prompt"] == "a photo of zwx dog as a watercolor"

    reply = await say(plain, people, "agian")
    again = jobs_of(plain)[-1]
    assert again.id != first.id and "Again: 4 pictures" in reply.text
    assert again.params["prompt"] == first.params["prompt"] and again.params["n"] == 4

    # Not finished yet: "bigger" says so and queues nothing.
    reply = await say(plain, people, "bigger")
    assert "aren't finished yet" in reply.text and len(jobs_of(plain)) == 2

    with session_scope(plain) as s:
        for job in s.scalars(select(Job)):
            job.status = "succeeded"
    mine = finished_image(plain, people.user_id, rex)
    theirs_subject = add_subject(plain, people.other_id, "Max", "zwy", "dog")
    finished_image(plain, people.other_id, theirs_subject)  # newer, but not hers
    reply = await say(plain, people, "make it bigger")
    upscale = jobs_of(plain)[-1]
    assert upscale.params.get("upscale_of") == mine and upscale.owner_id == people.user_id
    assert f"image #{mine}" in reply.text


async def test_quota_cancel_status_and_help(plain: Settings, people: World) -> None:
    add_subject(plain, people.user_id, "Rex", "zwx", "dog")
    assert "Today: 0/200 images" in (await say(plain, people, "what's my quota?")).text
    assert BASICS in (await say(plain, people, "what can I do")).text
    assert "nothing queued or running" in (await say(plain, people, "cancel")).text
    await say(plain, people, "put rex on the beach")
    [job] = jobs_of(plain)
    assert f"#{job.id} sample — queued" in (await say(plain, people, "status")).text
    reply = await say(plain, people, "cancle")
    assert f"Job #{job.id}: cancelled." in reply.text and jobs_of(plain)[0].status == "cancelled"


async def test_a_second_subject_named_and_someone_elses_never_used(plain: Settings, people: World) -> None:
    rex = add_subject(plain, people.user_id, "Rex", "zwx", "dog")
    luna = add_subject(plain, people.user_id, "Luna", "zwq", "cat")
    add_subject(plain, people.other_id, "Bella", "zwb", "dog")  # mallory's
    await say(plain, people, "rex and lunna at the beach")
    assert jobs_of(plain)[-1].params["subject_ids"] == [rex, luna]
    reply = await say(plain, people, "put bella on the moon")
    assert jobs_of(plain)[-1].params["subject_ids"] == []  # Bella is nobody she owns
    assert "bella on the moon" in reply.text.lower()


async def test_photos_with_this_is_rex_a_dog_offer_training_and_yes_starts_it(
    plain: Settings, people: World
) -> None:
    reply = await say(plain, people, "this is Rex, a dog", photos=[jpeg(i) for i in range(4)])
    assert "Got 4 photos of Rex (a dog)" in reply.text and "train Rex as a dog" in reply.text
    assert jobs_of(plain) == []

    reply = await say(plain, people, "yes")
    [job] = jobs_of(plain)
    assert job.kind == "train" and f"job #{job.id}" in reply.text
    with session_scope(plain) as s:
        subject = s.scalar(select(Subject))
        assert subject is not None and (subject.name, subject.class_noun) == ("Rex", "dog")
        assert subject.owner_id == people.user_id and len(subject.photos) == 4


async def test_a_person_needs_consent_in_basic_mode_too(plain: Settings, people: World) -> None:
    await say(plain, people, "this is Ann, a woman", photos=[face_jpeg(i) for i in range(3)])
    refused = await say(plain, people, "yes")
    assert jobs_of(plain) == [] and "right" in refused.text.lower()
    started = await say(plain, people, "train Ann as a woman, I have consent")
    assert [j.kind for j in jobs_of(plain)] == ["train"] and "has started" in started.text


async def test_the_photo_check_asks_in_basic_mode_and_train_anyway_trains(
    plain: Settings, people: World
) -> None:
    """Two copies and a dark photo: "yes" gets the photo check's question, not a job;
    "train anyway" then trains on the kept photos (the copy is left out)."""
    photos = [jpeg(0), jpeg(1), jpeg(2), jpeg(0), photo(color=(3, 3, 3))]
    await say(plain, people, "this is Rex, a dog", photos=photos)
    asked = await say(plain, people, "yes")
    assert jobs_of(plain) == [] and "1 is a copy of another" in asked.text and "Train anyway?" in asked.text
    started = await say(plain, people, "train anyway")
    [job] = jobs_of(plain)
    assert job.kind == "train" and "has started" in started.text
    with session_scope(plain) as s:
        subject = s.scalars(select(Subject)).one()
        assert len(subject.photos) == 4  # the copy is not trained on


@pytest.fixture
def broken(sqlite_settings: Settings, fake_llm: FakeLLM) -> Settings:
    return with_llm(sqlite_settings, fake_llm, llm_max_retries=0)


async def test_llm_answering_500_gives_the_polite_message_stored(broken: Settings, fake_llm: FakeLLM) -> None:
    world = World(add_user(broken, "alice"), add_user(broken, "bob"), 0)
    world.conversation_id = add_conversation(broken, world.user_id)
    fake_llm.fail(500)
    reply = await say(broken, world, "tell me a joke")
    assert reply.text.startswith(UNAVAILABLE) and reply.error and "failed" in reply.error
    assert thread(broken, world) == [("user", "tell me a joke"), ("assistant", reply.text)]
    assert "basic mode" in reply.text  # what still works meanwhile


async def test_llm_down_still_draws_the_dog_in_basic_mode(broken: Settings, fake_llm: FakeLLM) -> None:
    world = World(add_user(broken, "alice"), add_user(broken, "bob"), 0)
    world.conversation_id = add_conversation(broken, world.user_id)
    add_subject(broken, world.user_id, "Rex", "zwx", "dog")
    fake_llm.fail(503)
    reply = await say(broken, world, "put my dog on the moon")
    [job] = jobs_of(broken)
    assert reply.text.startswith(UNAVAILABLE) and MEANWHILE in reply.text and f"job #{job.id}" in reply.text
    assert NO_LLM_NOTE not in reply.text  # an LLM is configured; it just isn't answering
    assert thread(broken, world)[-1] == ("assistant", reply.text)


@pytest.mark.parametrize("status", [401, 402])
async def test_a_refused_key_is_stored_as_the_reply(broken: Settings, fake_llm: FakeLLM, status: int) -> None:
    world = World(add_user(broken, "alice"), add_user(broken, "bob"), 0)
    world.conversation_id = add_conversation(broken, world.user_id)
    fake_llm.fail(status)
    reply = await say(broken, world, "hello there")
    assert reply.text.startswith(ACCOUNT)
    assert thread(broken, world)[-1] == ("assistant", reply.text)


async def test_nonsense_from_the_llm_is_answered_and_stored(broken: Settings, fake_llm: FakeLLM) -> None:
    world = World(add_user(broken, "alice"), add_user(broken, "bob"), 0)
    world.conversation_id = add_conversation(broken, world.user_id)
    for _ in range(3):
        fake_llm.say('```tool_code\n{"name": "generate_images", "arguments": {\n```')
    reply = await say(broken, world, "moon please")
    assert reply.text == CONFUSED
    assert thread(broken, world)[-1] == ("assistant", CONFUSED)


def test_chat_status_names_the_mode(plain: Settings, fake_llm: FakeLLM) -> None:
    assert chat_status(plain).startswith("basic mode") and "DREAMBOT_LLM_API_KEY" in chat_status(plain)
    local = plain.model_copy(update={"llm_base_url": "http://127.0.0.1:11434/v1", "llm_model": "gemma3:27b"})
    assert chat_status(local).startswith("LLM gemma3:27b at 127.0.0.1:11434")


async def test_llm_failing_after_a_job_started_says_both_and_starts_nothing_more(
    broken: Settings, fake_llm: FakeLLM
) -> None:
    world = World(add_user(broken, "alice"), add_user(broken, "bob"), 0)
    world.conversation_id = add_conversation(broken, world.user_id)
    rex = add_subject(broken, world.user_id, "Rex", "zwx", "dog")
    fake_llm.call("generate_images", {"subject_ids": [rex], "prompt": "my dog on the moon"})
    fake_llm.fail(500)
    reply = await say(broken, world, "put my dog on the moon")
    [job] = jobs_of(broken)  # basic mode did not draw it a second time
    assert reply.text.startswith(UNAVAILABLE) and f"#{job.id}" in reply.text
    assert thread(broken, world)[-1] == ("assistant", reply.text)
