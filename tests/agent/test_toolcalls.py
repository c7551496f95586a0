"""The tolerant tool-call parser: every format Gemma writes, and never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.toolcalls import ToolCall, parse_reply, parse_tool_calls
from tests.helpers.fake_llm import gemma_call

ARGS = {"subject_ids": [3], "prompt": "on the moon, earth in the sky", "n": 4, "seed": None, "hd": True}
EXPECTED = [ToolCall("generate_images", ARGS)]
FORMATS = [
    "tool_code",
    "tool_code_python",
    "json_fence",
    "bare_json",
    "bare_parameters",
    "bare_list",
    "tool_calls_wrapper",
    "pythonic",
    "prose_json",
    "prose_fence",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gemma_writes_reads_the_same_call(fmt: str) -> None:
    assert parse_tool_calls(gemma_call("generate_images", ARGS, fmt)) == EXPECTED


def test_prose_around_a_call_is_kept_as_prose() -> None:
    parsed = parse_reply(gemma_call("generate_images", ARGS, "prose_json"))
    assert parsed.calls == EXPECTED
    assert parsed.prose.startswith("Sure! I'll do that now.")
    assert "generate_images" not in parsed.prose


def test_several_calls_in_order() -> None:
    text = (
        'First this:\n```tool_code\n{"name": "list_subjects", "arguments": {}}\n```\nthen\n'
        "```tool_code\n[my_quota(), job_status(job_id=5)]\n```"
    )
    assert parse_tool_calls(text) == [
        ToolCall("list_subjects", {}),
        ToolCall("my_quota", {}),
        ToolCall("job_status", {"job_id": 5}),
    ]


def test_json_list_and_openai_function_shape_with_string_arguments() -> None:
    text = json.dumps(
        {
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "cancel_job", "arguments": json.dumps({"job_id": 9})},
                },
                {"name": "my_quota"},
            ]
        }
    )
    assert parse_tool_calls(text) == [ToolCall("cancel_job", {"job_id": 9}), ToolCall("my_quota", {})]


def test_pythonic_namespaces_and_json_literals() -> None:
    text = "```tool_code\ndefault_api.generate_images(prompt='x', hd=true, seed=null, n=-1)\n```"
    assert parse_tool_calls(text) == [
        ToolCall("generate_images", {"prompt": "x", "hd": True, "seed": None, "n": -1})
    ]


def test_pythonic_is_never_evaluated() -> None:
    text = "[generate_images(prompt=__import__('os').system('touch /tmp/pwned'))]"
    assert parse_tool_calls(text) == []
    assert parse_tool_calls("```tool_code\nprint(open('/etc/passwd').read())\n```") == []


def test_unclosed_fence_from_a_cut_off_reply() -> None:
    text = '```tool_code\n{"name": "my_quota", "arguments": {}}\n'
    assert parse_tool_calls(text) == [ToolCall("my_quota", {})]


def test_parameters_key_and_parameters_as_json_string() -> None:
    assert parse_tool_calls('{"name": "job_status", "parameters": "{\\"job_id\\": 2}"}') == [
        ToolCall("job_status", {"job_id": 2})
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello! How can I help?",
        "Your dog is {very} cute [citation needed]",
        'Here is data: {"name": "Rex", "breed": "lab"}',
        "[1, 2, 3]",
        '{"a": 1}',
        "```python\nx = 1\n```",
        "```\nplain code\n```",
        "See [this(link)]",
        '```tool_output\n{"job_id": 1}\n```',
    ],
)
def test_plain_replies_and_data_are_not_calls(text: str) -> None:
    parsed = parse_reply(text)
    assert parsed.calls == []
    assert parsed.errors == []


@pytest.mark.parametrize(
    "text",
    [
        '```tool_code\n{"name": "generate_images", "arguments": {"prompt": "x",}}\n```',
        '```tool_code\ngenerate_images(prompt="x"\n```',
        'Sure: {"name": "generate_images", "arguments": {"prompt": "x"',
    ],
)
def test_malformed_calls_are_reported_not_ignored(text: str) -> None:
    parsed = parse_reply(text)
    assert parsed.calls == []
    assert parsed.errors, "a broken call must come back as an error to feed to the model"


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    calls = parse_tool_calls(text)
    assert isinstance(calls, list)
    assert all(isinstance(c.name, str) and isinstance(c.arguments, dict) for c in calls)


FRAGMENTS = st.sampled_from(
    [
        "```",
        "```tool_code\n",
        "```json\n",
        "{",
        "}",
        "[",
        "]",
        "(",
        ")",
        '"name"',
        ":",
        ",",
        '"arguments"',
        "generate_images",
        "=",
        "'",
        '"',
        "\n",
        "true",
        "null",
        "1e999",
        "**",
        "lambda",
        "0x",
        "\\",
        "{{{{",
        "[[[[[",
        "f(a=1)",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=40).map("".join))
def test_never_raises_on_call_like_garbage(text: str) -> None:
    assert isinstance(parse_tool_calls(text), list)


def test_never_raises_on_deep_nesting_or_huge_input() -> None:
    assert parse_tool_calls("[" * 5000 + "f(a=1)" + "]" * 5000) is not None
    assert parse_tool_calls("```tool_code\n" + "(" * 3000 + "\n```") == []
    assert parse_tool_calls("x" * 100_000) == []


PRINTED = [
    ("```tool_code\nprint(list_subjects())\n```", [ToolCall("list_subjects", {})]),
    ("```tool_code\nprint(default_api.list_subjects())\n```", [ToolCall("list_subjects", {})]),
    (
        '```tool_code\nprint(default_api.generate_images(prompt="Rex on the moon", n=2))\n```',
        [ToolCall("generate_images", {"prompt": "Rex on the moon", "n": 2})],
    ),
    (
        "Let me look.\n```tool_code\nprint(generate_images(subject_ids=[3], prompt='a beach', seed=None))\n```",
        [ToolCall("generate_images", {"subject_ids": [3], "prompt": "a beach", "seed": None})],
    ),
    ("```python\nprint(default_api.my_quota())\n```", [ToolCall("my_quota", {})]),
    ("```tool_code\nprint(job_status(job_id=7))\n```\n", [ToolCall("job_status", {"job_id": 7})]),
    (
        "```tool_code\nprint(default_api.list_subjects())\nprint(default_api.my_quota())\n```",
        [ToolCall("list_subjects", {}), ToolCall("my_quota", {})],
    ),
    (
        "```tool_code\nprint(list_subjects(), my_quota())\n```",
        [ToolCall("list_subjects", {}), ToolCall("my_quota", {})],
    ),
    ("```tool_code\nprint(cancel_job(job_id=4)\n", []),  # cut off mid-call: an error, not a call
]


@pytest.mark.parametrize(("text", "expected"), PRINTED)
def test_print_wrapped_calls_as_gemma_writes_them(text: str, expected: list[ToolCall]) -> None:
    parsed = parse_reply(text)
    assert parsed.calls == expected
    assert "print(" not in parsed.prose


@pytest.mark.parametrize(
    "text",
    [
        "```tool_code\nprint('hello')\n```",  # printing a value is not a call
        "```tool_code\nprint(list_subjects(), file=sys.stderr)\n```",  # keywords change what print does
        "```tool_code\nprint(__import__('os').system('id'))\n```",
    ],
)
def test_print_of_anything_but_calls_is_not_a_call(text: str) -> None:
    assert parse_reply(text).calls == []
