"""A tolerant reader of tool calls in a model's free text.

Gemma 3 has no native tool calling, so we ask it to write calls in a fenced block and
accept everything it is known to write instead: ```tool_code / ```json fences, bare JSON
(an object, a list, or `{"tool_calls": [...]}`, with `arguments` or `parameters`), the
pythonic `[generate_images(prompt="...", n=4)]` form (read with `ast`, never evaluated),
Gemma's habit of wrapping a call in `print(...)` inside a fence
(`print(default_api.list_subjects())`), prose before or after, several calls. `parse_tool_calls` never raises: whatever the
model wrote, the worst outcome is "no call" or a readable error to feed back.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_TEXT = 40_000  # a reply longer than this is not a tool call worth parsing
MAX_CANDIDATES = 200  # bound the bare-JSON scan on adversarial text

_FENCE = re.compile(r"```[ \t]*([A-Za-z_][\w-]*)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][\w.]{0,63}$")
_PY_CALL_START = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")
# Prefixes models put before a function name ("default_api.generate_images").
_NAMESPACES = ("default_api.", "functions.", "tools.", "api.")
_CALL_FENCES = {"tool_code", "tool_call", "tool_calls", "json", "python", "py", "function_call", ""}
_ARG_KEYS = ("arguments", "parameters", "args", "input", "params")
_JSON_HINT = re.compile(r'[{,]\s*"(name|tool_calls|function|tool)"\s*:')
_CALL_OPEN = re.compile(r'\{\s*"(name|tool_calls|function|tool)"\s*:')


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """A stable identity for spotting an identical repeated call."""
        return self.name + json.dumps(self.arguments, sort_keys=True, default=str)


@dataclass
class ParsedReply:
    """What a reply contained: calls, errors worth feeding back, and the prose around them."""

    calls: list[ToolCall]
    errors: list[str]
    prose: str


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every tool call in `text`, in order; an empty list means a plain reply."""
    return parse_reply(text).calls


def parse_reply(text: str) -> ParsedReply:
    try:
        return _parse(text if isinstance(text, str) else str(text))
    except Exception:  # the contract is "never raises"; a parser bug reads as no call
        return ParsedReply([], [], text if isinstance(text, str) else "")


def _parse(text: str) -> ParsedReply:
    if len(text) > MAX_TEXT:
        return ParsedReply([], [], text)
    calls: list[ToolCall] = []
    errors: list[str] = []
    spans: list[tuple[int, int]] = []

    # An unclosed fence (a reply cut off at max_tokens) still holds a readable call.
    fenced = text + "```" if text.count("```") % 2 else text
    for m in _FENCE.finditer(fenced):
        lang = (m.group(1) or "").lower()
        body = m.group(2).strip()
        if lang not in _CALL_FENCES or not body:
            continue
        found, error = _parse_block(body, lang)
        if found:
            calls.extend(found)
            spans.append(_clip(m.span(), len(text)))
        elif error and (lang.startswith("tool") or _JSON_HINT.search(body)):
            errors.append(error)
            spans.append(_clip(m.span(), len(text)))

    if not calls and not errors:
        calls, spans, errors = _scan_bare(text)

    prose = _cut(text, spans).strip()
    return ParsedReply(calls, errors, prose)


def _parse_block(body: str, lang: str) -> tuple[list[ToolCall], str | None]:
    """Calls in a fenced block: JSON first, then Python call syntax."""
    json_error = None
    try:
        return _calls_from_json(json.loads(body)), None
    except ValueError as exc:
        json_error = f"the tool call is not valid JSON ({exc})"
    py = _calls_from_python(body, bare_ok=True)
    if py:
        return py, None
    if body.lstrip().startswith(("{", "[")):
        return [], json_error
    return [], 'the tool call could not be read; write it as JSON with "name" and "arguments"'


def _scan_bare(text: str) -> tuple[list[ToolCall], list[tuple[int, int]], list[str]]:
    """Unfenced calls: JSON values anywhere in the prose, or a `[f(a=1)]` list."""
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    decoder = json.JSONDecoder()
    pos, tried = 0, 0
    broken = False  # an object that opens like a call but is not valid JSON
    while tried < MAX_CANDIDATES:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        tried += 1
        found: list[ToolCall] = []
        end = start + 1
        try:
            value, end = decoder.raw_decode(text, start)
            found = _calls_from_json(value)
        except ValueError:
            broken = broken or bool(_CALL_OPEN.match(text, start))
            if text[start] == "[" and _PY_CALL_START.match(text, start):
                found, end = _python_list_at(text, start)
        if found:
            calls.extend(found)
            spans.append((start, end))
            pos = end
        else:
            pos = start + 1
    errors: list[str] = []
    if not calls and broken:
        errors.append(
            "the tool call is not valid JSON; write it as "
            '{"name": "...", "arguments": {...}} inside a ```tool_code block'
        )
    return calls, spans, errors


def _python_list_at(text: str, start: int) -> tuple[list[ToolCall], int]:
    """A `[f(...), g(...)]` list starting at `start`: try each closing bracket in turn."""
    end = text.find("]", start)
    tries = 0
    while end >= 0 and tries < 50:
        tries += 1
        found = _calls_from_python(text[start : end + 1], bare_ok=False)
        if found:
            return found, end + 1
        end = text.find("]", end + 1)
    return [], start + 1


def _clip(span: tuple[int, int], n: int) -> tuple[int, int]:
    return span[0], min(span[1], n)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for a, b in sorted(spans):
        if a >= last:
            out.append(text[last:a])
            last = b
    out.append(text[last:])
    return "".join(out)


# -- JSON shapes ---------------------------------------------------------------------


def _calls_from_json(value: Any) -> list[ToolCall]:
    if isinstance(value, list):
        calls = [c for item in value for c in _calls_from_json(item)]
        # A list counts only when every element is a call; otherwise it is data.
        return calls if calls and len(calls) == len(value) else []
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("tool_calls"), list):
        return [c for item in value["tool_calls"] for c in _calls_from_json(item)]
    if isinstance(value.get("function"), dict):  # OpenAI's {"type": "function", "function": {...}}
        return _calls_from_json(value["function"])
    name = value.get("name", value.get("tool", value.get("function")))
    if not isinstance(name, str) or not _NAME.match(name):
        return []
    args: Any = {}
    for key in _ARG_KEYS:
        if key in value:
            args = value[key]
            break
    else:
        if set(value) - {"name", "tool", "function", "type", "id"}:
            return []  # {"name": "Rex", "breed": "..."} is data, not a call
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return []
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return []
    return [ToolCall(_strip_namespace(name), args)]


def _strip_namespace(name: str) -> str:
    for prefix in _NAMESPACES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# -- Python call syntax ----------------------------------------------------------------


def _calls_from_python(source: str, *, bare_ok: bool) -> list[ToolCall]:
    """`[f(a=1), g()]`, or (inside a fence, `bare_ok`) `f(a=1)` lines; never evaluated."""
    try:
        tree = ast.parse(source.strip(), mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []
    nodes: list[ast.expr] = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr):
            return []
        value = stmt.value
        if isinstance(value, ast.List | ast.Tuple):
            nodes.extend(value.elts)
        elif bare_ok and _is_print(value):
            nodes.extend(value.args)  # type: ignore[attr-defined]
        elif bare_ok and isinstance(value, ast.Call):
            nodes.append(value)
        else:
            return []
    calls = [_call_from_node(node) for node in nodes]
    if not calls or any(c is None for c in calls):
        return []
    return [c for c in calls if c is not None]


def _is_print(node: ast.expr) -> bool:
    """`print(f(...), ...)`: Gemma 3 writes calls as code whose result is shown; the
    wrapped calls are the calls (keywords such as `sep=` would mean something else)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and bool(node.args)
        and not node.keywords
    )


def _call_from_node(node: ast.expr) -> ToolCall | None:
    if not isinstance(node, ast.Call):
        return None
    name = _dotted(node.func)
    if name is None or not _NAME.match(name):
        return None
    args: dict[str, Any] = {}
    try:
        for positional in node.args:
            value = _literal(positional)
            if not isinstance(value, dict):
                return None  # positional values have no name to validate against
            args.update(value)
        for kw in node.keywords:
            if kw.arg is None:
                value = _literal(kw.value)
                if not isinstance(value, dict):
                    return None
                args.update(value)
            else:
                args[kw.arg] = _literal(kw.value)
    except ValueError:
        return None
    return ToolCall(_strip_namespace(name), args)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


_NAMED_CONSTANTS = {"true": True, "false": False, "null": None, "none": None}


def _literal(node: ast.expr) -> Any:
    """A literal value: like `ast.literal_eval`, plus JSON's true/false/null."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id.lower() in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id.lower()]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                raise ValueError("** in a literal")
            key = _literal(k)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ValueError("unhashable key")
            out[key] = _literal(v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {type(node).__name__}")
