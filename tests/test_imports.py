"""The package structure of docs/architecture.md, checked on the source: who may import whom,
and no import cycles. Imports inside functions count (a lazy import is still a dependency);
imports under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "agent", "gpu_worker", "bot")
# The only bot modules that may import gpu_worker: the CLI's worker, local train/generate
# and doctor commands, which run GPU code in the CLI's own process. The chat host installs
# no GPU stack; it reaches workers by task name.
BOT_MAY_IMPORT_GPU_WORKER = {"bot.cli.main", "bot.cli.local", "bot.cli.local_jobs", "bot.cli.doctor"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def owner(name: str) -> str | None:
    """The project module that `name` (a module or a name in one) lives in, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(module: str, tree: ast.Module) -> list[str]:
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            # `from pkg import submodule` depends on the submodule, not on all of pkg.
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return names


def build_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {owner(n) for n in imported_names(module, ast.parse(path.read_text()))}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = build_graph()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def imports_of(package: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == package or m.startswith(f"{package}.")}


def offending(package: str, forbidden: tuple[str, ...], allowed: set[str] = frozenset()) -> list[str]:
    return sorted(
        f"{m} imports {d}"
        for m, deps in imports_of(package).items()
        if m not in allowed
        for d in deps
        if d.split(".")[0] in forbidden
    )


def test_the_checker_sees_the_packages_and_their_imports() -> None:
    # If the parsing broke, every rule below would pass vacuously.
    assert {"core.jobs", "agent.tools", "gpu_worker.runtime", "bot.chat.service"} <= GRAPH.keys()
    assert "core.actions.images" in GRAPH["agent.tools"]
    assert "core.settings" in GRAPH["core.jobs"]


def test_there_are_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("core", ("agent", "bot", "gpu_worker")), ("agent", ("bot", "gpu_worker"))],
)
def test_lower_layers_do_not_import_higher_ones(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


def test_bot_imports_gpu_worker_only_in_the_cli() -> None:
    assert offending("bot", ("gpu_worker",), BOT_MAY_IMPORT_GPU_WORKER) == []
    assert GRAPH.keys() >= BOT_MAY_IMPORT_GPU_WORKER  # a renamed module must be renamed here too


# bot's roles, lowest first: each may import the ones before it, never one after it (and
# `bot.platforms` and `bot.web` are peers: neither imports the other).
BOT_ROLES = ("bot.chat", "bot.platforms", "bot.web", "bot.process", "bot.cli")


def role_of(module: str) -> str | None:
    return next((r for r in BOT_ROLES if module == r or module.startswith(f"{r}.")), None)


def test_bot_roles_import_only_lower_roles() -> None:
    above = {r: set(BOT_ROLES[i + 1 :]) for i, r in enumerate(BOT_ROLES)}
    above["bot.platforms"] |= {"bot.web"}
    wrong = sorted(
        f"{m} imports {d}"
        for m, deps in imports_of("bot").items()
        for d in deps
        if role_of(m) and role_of(d) in above[role_of(m) or ""]
    )
    assert wrong == []
    # every bot module belongs to a role, so no new module escapes the rule
    assert [m for m in imports_of("bot") if m != "bot" and role_of(m) is None] == []
