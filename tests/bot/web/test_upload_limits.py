"""The playground's uploads are bounded while they arrive: the web process's memory stays
flat while large bodies are refused (declared or not), and 49 MP photos are decoded one at
a time. The real app runs under uvicorn in its own process; its memory is read with psutil
and its peak from /proc (VmHWM), compared with bounds."""

from __future__ import annotations

import json

import httpx
from pydantic import SecretStr

from core.settings import Settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.photos import big_png, jpeg
from tests.helpers.web_process import MB, WebProcess, multipart, raw_post, web_process


def visitor(server: WebProcess) -> dict[str, str]:
    page = httpx.get(server.url + "/")
    return {"dreambot_web": page.cookies["dreambot_web"]}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def warm_up(server: WebProcess, cookies: dict[str, str]) -> None:
    """One ordinary training, so lazy imports and first-use caches are not counted."""
    files = [("files", (f"w{i}.jpg", jpeg(i), "image/jpeg")) for i in range(3)]
    data = {"name": "Warm", "class_noun": "mug"}
    reply = httpx.post(server.url + "/api/train", data=data, files=files, cookies=cookies, timeout=60)
    assert reply.status_code == 200 and reply.json()["job_ids"], reply.text


def test_large_uploads_are_refused_while_memory_stays_flat(sqlite_settings: Settings) -> None:
    with web_process(sqlite_settings) as server:
        cookies = visitor(server)
        warm_up(server, cookies)
        cookie = cookie_header(cookies)
        fields = {"name": "Rex", "class_noun": "dog"}
        before = server.rss()
        server.reset_peak()

        # 300 MB declared up front: refused on the header, before the body is read.
        three = [(f"big{i}.jpg", 100 * MB) for i in range(3)]
        declared = raw_post(server.port, "/api/train", multipart(fields, three), cookie=cookie)
        assert declared.status == 413
        assert declared.sent < 32 * MB, "the server read the body before refusing it"

        # The same without a length (chunked): counted while it arrives, stopped past the limit.
        streamed = raw_post(server.port, "/api/train", multipart(fields, three), cookie=cookie, chunked=True)
        assert streamed.status == 413 and streamed.sent < 160 * MB

        # One 60 MB photo in a small request: refused by its size, never read back whole.
        photos = [("huge.jpg", 60 * MB), ("a.jpg", jpeg(1)), ("b.jpg", jpeg(2))]
        one = raw_post(server.port, "/api/train", multipart(fields, photos), cookie=cookie)
        assert one.status == 413
        assert json.loads(one.body)["detail"] == "“huge.jpg” is 63 MB; please send photos under 40 MB."
        chat = raw_post(server.port, "/api/chat", multipart({"text": "hi"}, photos[:1]), cookie=cookie)
        assert chat.status == 413 and "huge.jpg" in json.loads(chat.body)["detail"]

        # The photo check before Train reads its photos within the same limits.
        noun = {"class_noun": "dog"}
        check = raw_post(server.port, "/api/photos/check", multipart(noun, three), cookie=cookie)
        assert check.status == 413 and check.sent < 32 * MB
        check = raw_post(server.port, "/api/photos/check", multipart(noun, photos), cookie=cookie)
        assert check.status == 413 and json.loads(check.body)["detail"] == json.loads(one.body)["detail"]

        assert server.peak() - before < 64 * MB, f"peak +{(server.peak() - before) // MB} MB"
        assert server.rss() - before < 64 * MB
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_49_megapixel_photos_are_decoded_one_at_a_time(sqlite_settings: Settings) -> None:
    """Four 7000×7000 PNGs (~160 KB each, ~150 MB each decoded) through training and
    through the chat (where they are shown to the model): one decoded copy at a time, and
    the memory goes back afterwards."""
    fake = FakeLLM().start()
    settings = sqlite_settings.model_copy(
        update={"llm_base_url": fake.url, "llm_api_key": SecretStr("sk-test"), "llm_max_retries": 0}
    )
    photos = [("files", (f"mug{i}.png", big_png(i), "image/png")) for i in range(4)]
    try:
        with web_process(settings) as server:
            cookies = visitor(server)
            warm_up(server, cookies)
            # "Train anyway": flat test PNGs are blurry to the photo check, which runs on them all the same.
            train = {"name": "Mug", "class_noun": "mug", "confirmed": "true"}
            for path, data in (("/api/train", train), ("/api/chat", {})):
                fake.say("Nice mug!")
                before = server.rss()
                server.reset_peak()
                reply = httpx.post(server.url + path, data=data, files=photos, cookies=cookies, timeout=300)
                assert reply.status_code == 200, reply.text
                assert (
                    reply.json()["job_ids"] if path == "/api/train" else reply.json()["text"] == "Nice mug!"
                )
                peak, kept = server.peak() - before, server.rss() - before
                assert peak < 320 * MB, f"{path}: peak +{peak // MB} MB"
                assert kept < 100 * MB, f"{path}: kept +{kept // MB} MB"
    finally:
        fake.stop()
