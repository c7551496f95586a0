"""Memory trimming: whole exchanges go, oldest first; the first and newest stay."""

from __future__ import annotations

from agent.memory import estimate_tokens, exchanges, trim
from agent.prompt import Turn
from agent.toolcalls import ToolCall


def thread(n: int) -> list[Turn]:
    turns = [Turn("user", "FIRST " + "x" * 400), Turn("assistant", "welcome")]
    for i in range(n):
        turns += [
            Turn("user", f"ask {i} " + "y" * 400),
            Turn("assistant", "", calls=[ToolCall("job_status", {"job_id": i})]),
            Turn("tool", f'```tool_output\n{{"job_id": {i}}}\n```'),
            Turn("assistant", f"answer {i}"),
        ]
    return turns


def test_trim_keeps_first_and_newest_and_never_splits_a_call_from_its_result() -> None:
    turns = thread(20)
    kept = trim(turns, budget_tokens=800)
    assert kept[0].text.startswith("FIRST") and kept[-1].text == "answer 19"
    assert sum(estimate_tokens(t) for t in kept) <= 800
    assert len(kept) < len(turns)
    for group in exchanges(kept):
        assert group[0].role == "user"
        calls = [t for t in group if t.calls]
        results = [t for t in group if t.role == "tool"]
        assert len(calls) == len(results)


def test_trim_keeps_everything_that_fits_and_both_ends_even_when_nothing_fits() -> None:
    turns = thread(3)
    assert trim(turns, budget_tokens=100_000) == turns
    kept = trim(turns, budget_tokens=10)
    assert kept[0].text.startswith("FIRST") and kept[-1].text == "answer 2" and len(kept) == 6
