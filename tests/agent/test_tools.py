"""Each tool through `run_tool`, on a real migrated DB: ownership, quotas and errors in code."""

from __future__ import annotations

from sqlalchemy import select

from agent.toolcalls import ToolCall
from agent.tools import ToolContext, run_tool
from core.db import session_scope
from core.models import Image, Job, Photo, Subject, User
from core.settings import Settings
from core.subjects import pick_token
from tests.agent.conftest import World, add_subject, photo
from tests.helpers.photos import face_jpeg, jpeg


def ctx_for(settings: Settings, world: World, event: str | None = "web:e1") -> ToolContext:
    return ToolContext(settings, world.user_id, world.conversation_id, event)


def run(ctx: ToolContext, tool: str, /, **args):
    return run_tool(ctx, ToolCall(tool, args))


def finished_image(settings: Settings, owner_id: int, subject_id: int) -> int:
    with session_scope(settings) as session:
        subject = session.get(Subject, subject_id)
        job = Job(
            kind="sample",
            queue="q",
            owner_id=owner_id,
            status="succeeded",
            params={"n": 1},
            progress={},
            subjects=[subject],
            subject_id=subject_id,
        )
        session.add(job)
        session.flush()
        image = Image(
            job_id=job.id,
            storage_key="x.png",
            seed=1,
            prompt="a photo of zwx dog on a beach",
            width=64,
            height=64,
        )
        session.add(image)
        session.flush()
        return image.id


def test_vary_and_upscale_only_own_images(agent_settings: Settings, world: World) -> None:
    rex = add_subject(agent_settings, world.user_id, "Rex", "zwx", "dog")
    fido = add_subject(agent_settings, world.other_id, "Fido", "sks", "dog")
    mine = finished_image(agent_settings, world.user_id, rex)
    theirs = finished_image(agent_settings, world.other_id, fido)
    ctx = ctx_for(agent_settings, world)

    vary = run(ctx, "vary_image", image_id=mine, prompt="my dog in the snow", n=2)
    up = run(ctx, "upscale_image", image_id=mine)
    refused = run(ctx, "vary_image", image_id=theirs)
    assert "error" not in vary.output and "error" not in up.output
    assert refused.output["error"] == f"Image #{theirs} is not one of this person's images."
    with session_scope(agent_settings) as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.queue != "q"))}
    v, u = jobs[vary.output["job_id"]], jobs[up.output["job_id"]]
    assert v.params["variation_of"] == mine and v.params["prompt"] == "a photo of zwx dog in the snow"
    assert v.params["n"] == 2 and v.params["subject_ids"] == [rex]
    assert u.params["upscale_of"] == mine and u.params["prompt"] == "a photo of zwx dog on a beach"
    assert (v.idempotency_key, u.idempotency_key) == ("web:e1:1", "web:e1:2")


def test_untrained_subject_and_quota_are_explained(agent_settings: Settings, world: World) -> None:
    pending = add_subject(agent_settings, world.user_id, "Rex", "zwx", "dog", trained=False)
    ctx = ctx_for(agent_settings, world)
    out = run(ctx, "generate_images", subject_ids=[pending], prompt="moon").output
    assert "not trained yet" in out["error"]
    with session_scope(agent_settings) as session:
        session.get(User, world.user_id).images_per_day = 3
    out = run(ctx, "generate_images", prompt="a castle", n=4).output
    assert "you have 3 left today" in out["error"]
    assert ctx.job_ids == []


def test_job_status_cancel_and_quota_for_own_jobs_only(agent_settings: Settings, world: World) -> None:
    ctx = ctx_for(agent_settings, world)
    started = run(ctx, "generate_images", prompt="a castle at dusk").output
    job_id = started["job_id"]
    assert started["prompt"] == "a castle at dusk"
    assert run(ctx, "job_status", job_id=job_id).output["status"] == "queued"
    assert [j["job_id"] for j in run(ctx, "job_status").output["recent_jobs"]] == [job_id]
    other = ToolContext(agent_settings, world.other_id, None, None)
    assert "not one of this person's jobs" in run(other, "cancel_job", job_id=job_id).output["error"]
    assert "not one of this person's jobs" in run(other, "job_status", job_id=job_id).output["error"]
    assert run(ctx, "cancel_job", job_id=job_id).output["status"] == "cancelled"
    quota = run(ctx, "my_quota").output
    assert quota["images_today"] == 1 and quota["active_jobs"] == 0


def test_list_subjects_shows_only_own(agent_settings: Settings, world: World) -> None:
    rex = add_subject(agent_settings, world.user_id, "Rex", "zwx", "dog")
    add_subject(agent_settings, world.other_id, "Fido", "sks", "dog")
    out = run(ctx_for(agent_settings, world), "list_subjects").output
    assert out["subjects"] == [{"id": rex, "name": "Rex", "class_noun": "dog", "trained": True}]


def _send_photos(settings: Settings, world: World, photos: list[bytes]) -> None:
    from agent.memory import save_message, save_photos
    from core.storage import storage_from_settings

    mid = save_message(
        settings, conversation_id=world.conversation_id, user_id=world.user_id, role="user", content="photos"
    )
    save_photos(storage_from_settings(settings), world.conversation_id, mid, photos)


def test_train_subject_uses_the_latest_photos_and_a_fresh_token(
    agent_settings: Settings, world: World
) -> None:
    add_subject(agent_settings, world.user_id, "Old", "zwx", "dog")
    ctx = ctx_for(agent_settings, world)
    assert "at least 3 photos" in run(ctx, "train_subject", name="Rex", class_noun="dog").output["error"]
    _send_photos(agent_settings, world, [jpeg(i) for i in range(3)])  # three different photos
    assert (
        "already have a subject called"
        in run(ctx, "train_subject", name="old", class_noun="dog").output["error"]
    )
    out = run(ctx, "train_subject", name="Rex", class_noun="Dog").output
    with session_scope(agent_settings) as session:
        subject = session.get(Subject, out["subject_id"])
        photos = list(session.scalars(select(Photo).where(Photo.subject_id == subject.id)))
        job = session.get(Job, out["job_id"])
        assert (subject.token, subject.class_noun, subject.owner_id) == ("sks", "dog", world.user_id)
        assert len(photos) == 3 and job.kind == "train" and job.subject_id == subject.id
    again = run(ctx_for(agent_settings, world), "train_subject", name="Rex", class_noun="dog").output
    assert again["job_id"] == out["job_id"]  # the same event: no second subject or job


def test_train_subject_rejects_tiny_photos_and_leaves_nothing(agent_settings: Settings, world: World) -> None:
    _send_photos(agent_settings, world, [photo(), photo(), photo(100, 100)])
    out = run(ctx_for(agent_settings, world), "train_subject", name="Rex", class_noun="dog").output
    assert "only 100×100 pixels" in out["error"]
    with session_scope(agent_settings) as session:
        assert list(session.scalars(select(Subject))) == []


def test_describe_photos_warns_before_training(agent_settings: Settings, world: World) -> None:
    _send_photos(agent_settings, world, [face_jpeg(0), face_jpeg(1)])  # the photo coach is content
    out = run(
        ctx_for(agent_settings, world),
        "describe_photos",
        class_noun="woman",
        one_subject=False,
        blurry=True,
        face_visible=False,
        accessories=["sunglasses"],
    ).output
    assert out["photos"] == 2 and out["subject_kind"] == "person" and out["ready_to_train"] is False
    assert len(out["warnings"]) == 5


def test_pick_token_is_unique_per_person() -> None:
    assert pick_token(set()) == "zwx"
    assert pick_token({"zwx", "sks"}) == "ohwx"
    from core.subjects import RARE_TOKENS

    assert pick_token(set(RARE_TOKENS)) == "zwx2"


def test_describe_photos_gives_the_photo_coachs_numbers_and_train_subject_asks_first(
    agent_settings: Settings, world: World
) -> None:
    dark = photo(color=(2, 2, 2))
    _send_photos(agent_settings, world, [jpeg(1), jpeg(2), jpeg(1), jpeg(3), dark])
    out = run(ctx_for(agent_settings, world), "describe_photos", class_noun="dog").output
    check = out["photo_check"]
    assert check["summary"] == (
        "1 of 5 photos is blurry; 1 is too dark; 1 is a copy of another — 4 photos will be used."
    )
    assert [p["verdict"] for p in check["photos"]] == ["ok", "ok", "drop", "ok", "warn"]
    assert check["photos"][4]["dark_share"] > 0.9 and check["photos"][0]["sharpness"] > 0
    assert "Photo 3: This photo is a copy of photo 1 — only one of them is trained on." in out["warnings"]

    asked = run(ctx_for(agent_settings, world), "train_subject", name="Rex", class_noun="dog").output
    assert asked["error"].endswith("Train anyway?")
    with session_scope(agent_settings) as session:
        assert list(session.scalars(select(Subject).where(Subject.name == "Rex"))) == []
    args = {"name": "Rex", "class_noun": "dog", "photos_confirmed": True}
    started = run(ctx_for(agent_settings, world, event="e-yes"), "train_subject", **args).output
    with session_scope(agent_settings) as session:
        kept = list(session.scalars(select(Photo).where(Photo.subject_id == started["subject_id"])))
    assert len(kept) == 4  # the copy is not trained on
