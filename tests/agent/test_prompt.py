"""Message shaping for Gemma, photo downscaling, and the diffusion prompt built by code."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from agent.prompt import Turn, photo_data_url, render_tool, shape_messages, system_prompt, tool_output
from agent.toolcalls import ToolCall, parse_tool_calls
from agent.tools import tool_specs
from tests.agent.conftest import photo


def decode(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def roles(messages: list[dict]) -> list[str]:
    return [m["role"] for m in messages]


def test_system_folded_into_first_user_turn_and_roles_alternate() -> None:
    turns = [
        Turn("user", "hi"),
        Turn("user", "are you there?"),
        Turn("assistant", "", calls=[ToolCall("list_subjects", {})]),
        Turn("tool", tool_output([{"subjects": []}])),
        Turn("assistant", "You have no subjects yet."),
        Turn("assistant", "Want to train one?"),
        Turn("user", "yes"),
    ]
    messages = shape_messages("SYSTEM RULES", turns)
    assert roles(messages) == ["user", "assistant", "user", "assistant", "user"]
    first = messages[0]["content"]
    assert first.startswith("SYSTEM RULES") and "hi" in first and "are you there?" in first
    assert "```tool_code" in messages[1]["content"] and "list_subjects" in messages[1]["content"]
    assert messages[2]["content"].startswith("```tool_output\n")
    assert messages[3]["content"] == "You have no subjects yet.\n\nWant to train one?"


def test_conversation_starting_with_assistant_still_starts_with_user() -> None:
    messages = shape_messages("", [Turn("assistant", "Hello!"), Turn("user", "hi")])
    assert roles(messages) == ["user", "assistant", "user"]


def test_photos_become_small_jpeg_data_urls_and_extra_ones_a_placeholder() -> None:
    big = photo(3000, 2000, fmt="PNG")
    turn = Turn("user", "train my dog", images=[big, photo(500, 700), photo(), photo(), photo(), photo()])
    messages = shape_messages("S", [turn], max_images=4)
    parts = messages[0]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 4
    first = decode(images[0]["image_url"]["url"])
    assert first.format == "JPEG" and max(first.size) == 896 and first.size == (896, 597)
    assert decode(images[1]["image_url"]["url"]).size == (500, 700)  # small ones are not enlarged
    texts = " ".join(p["text"] for p in parts if p["type"] == "text")
    assert "2 photo(s)" in texts and texts.startswith("S")


def test_older_photos_are_a_placeholder_not_pixels() -> None:
    messages = shape_messages(
        "S", [Turn("user", "here", hidden_photos=5), Turn("assistant", "nice"), Turn("user", "train it")]
    )
    assert all(isinstance(m["content"], str) for m in messages)
    assert "[5 photo(s) sent earlier" in messages[0]["content"]


def test_transparent_and_rotated_photos_are_upright_rgb() -> None:
    img = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", exif=exif)
    assert decode(photo_data_url(buf.getvalue())).size == (200, 400)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = decode(photo_data_url(buf.getvalue()))
    assert out.mode == "RGB" and out.getpixel((10, 10)) == (255, 255, 255)


def test_a_broken_photo_is_described_not_fatal() -> None:
    messages = shape_messages("S", [Turn("user", "look", images=[b"not an image"])])
    assert "could not be opened" in messages[0]["content"]


def test_system_prompt_lists_tools_and_the_call_format_in_prompted_mode_only() -> None:
    prompted = system_prompt(tool_specs(), "This person has no subjects yet.", native=False)
    assert "```tool_code" in prompted and "- generate_images(" in prompted
    assert "language the person writes in" in prompted and "always in English" in prompted
    # The example in our own instructions must parse with our own parser.
    assert parse_tool_calls(prompted)[0].name == "generate_images"
    native = system_prompt(tool_specs(), "ctx", native=True)
    assert "```tool_code" not in native and "generate_images(" not in native and native.endswith("ctx")


def test_render_tool_is_a_compact_signature() -> None:
    spec = next(s for s in tool_specs() if s["name"] == "generate_images")
    line = render_tool(spec)
    assert line.startswith("- generate_images(subject_ids: list[int]")
    assert "prompt: str" in line and "n: int [minimum=1, maximum=8] = 1" in line
    assert '"square" | "portrait" | "landscape"' in line


@pytest.mark.parametrize(
    ("so_far", "shown"),
    [
        ("Hello the", "Hello the"),
        ("```tool_code\n{", ""),
        ('{"name": "x"', ""),
        ("[generate_images(", ""),
        ("`", ""),
        ("tool_", ""),
        ("Sure, starting now.\n```tool_code\n{", "Sure, starting now."),
        ("Sure, starting now.\n``", "Sure, starting now."),
        ('Okay {"name": "x"', "Okay"),
    ],
)
def test_streaming_shows_prose_but_never_a_call(so_far: str, shown: str) -> None:
    from agent.loop import visible_text

    assert visible_text(so_far) == shown
