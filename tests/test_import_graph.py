"""The package's import graph has no cycle: every import counts, at module level or inside a
function (a lazy import that dodges a cycle still is one), except those under TYPE_CHECKING,
which never run."""

from __future__ import annotations

import ast
from pathlib import Path

import ces_nb

PACKAGE = Path(ces_nb.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module -> the ces_nb modules it imports (a package's __init__ counts as the package)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                submodules = {f"{origin}.{a.name}" for a in node.names} & modules
                # `from . import audio` imports the module audio; `from .model import Turn`, the module model.
                targets.update(submodules or {origin})
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_ces_nb_imports():
    graph = import_graph()
    assert "ces_nb.model" in graph["ces_nb.session"] and "ces_nb.emulator.errors" in graph["ces_nb.emulator.services.session"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_ces_nb_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _reached(graph: dict[str, set[str]], starts: list[str]) -> set[str]:
    seen, stack = set(), list(starts)
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_emulator_never_imports_the_notebook_side():
    """It may read records (recorded transcripts are scripts), the one OTel mapping, audio and TTS;
    never a session, a client, magics, widgets, frames or the explorers."""
    graph = import_graph()
    reached = _reached(graph, [m for m in graph if m.startswith("ces_nb.emulator")])
    outside = {m for m in reached if not m.startswith("ces_nb.emulator")}
    allowed = {"ces_nb.convert.otel", "ces_nb.model", "ces_nb.audio", "ces_nb.tts",
               # what the records' reprs call: renderers that take records and import none
               "ces_nb.render.text", "ces_nb.render.html", "ces_nb.render.markdown", "ces_nb.diff",
               # the EvaluationService: SessionOutputs become records, and one scoring engine plays
               # and scores a case (evals.conversation), as `ces_nb.evaluate` does through a client
               "ces_nb.convert.session_output", "ces_nb.convert.protos", "ces_nb.inputs",
               *(f"ces_nb.evals.{m}" for m in ("cases", "conversation", "errors", "goldens", "judges", "matching",
                                                "native", "observe", "results", "scoring"))}
    assert outside <= allowed, sorted(outside - allowed)
    assert "ces_nb.evals.conversation" in outside and "ces_nb.evals.runner" not in outside
    assert "ces_nb.convert.otel" in outside  # the emulator builds root_span with the shared mapping


def test_records_and_their_renderers_import_no_session_client_or_widgets():
    graph = import_graph()
    reached = _reached(graph, ["ces_nb.model"])
    assert not reached & {"ces_nb.session", "ces_nb.client", "ces_nb.live", "ces_nb.magics", "ces_nb.render.tool_form",
                          "ces_nb.render.span_tree", "ces_nb.client_tools"}, sorted(reached)
