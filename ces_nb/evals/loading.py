"""Files, folders and objects -> cases: which reader a file needs is read from its shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .cases import Case, Thresholds
from .errors import EvalFileError, shown
from .native import is_evaluation, is_thresholds, read_evaluations, read_thresholds
from .scrapi import read_goldens, read_tool_tests, read_turn_evals

SUFFIXES = (".yaml", ".yml", ".json")


def read_file(path: str | Path) -> tuple[list[Case], Thresholds | None]:
    """One file's cases, and the thresholds it sets (a file of EvaluationMetricsThresholds)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalFileError(source, "", "no such file") from None
    except UnicodeDecodeError:
        raise EvalFileError(source, "", "not UTF-8 text") from None
    data = _parse(text, source, path.suffix.lower())
    if is_thresholds(data):
        return [], read_thresholds(data, source)
    return read_data(data, source, hint=str(path)), None


def _parse(text: str, source: str, suffix: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalFileError(source, f"line {exc.lineno} column {exc.colno}", f"not JSON ({exc.msg})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # both marks: where the scanner gave up (an unclosed quote: the end of the file) and where
        # the thing it was reading began (the quote's line)
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if context is not None and (mark is None or (context.line, context.column) != (mark.line, mark.column)):
            started = f"{getattr(exc, 'context', None) or 'started'} at line {context.line + 1} column {context.column + 1}"
            problem = f"{problem}; {started}"
        raise EvalFileError(source, where, f"not YAML ({problem})") from None


def read_data(data: Any, source: str = "<data>", hint: str = "") -> list[Case]:
    """Parsed evaluation data in any of the formats, to cases."""
    if is_evaluation(data) or (isinstance(data, dict) and "evaluations" in data) or (isinstance(data, list) and data and all(is_evaluation(d) for d in data)):
        return read_evaluations(data, source)
    if not isinstance(data, dict):
        raise EvalFileError(source, "", f"expected goldens, tool tests, turn evals or a CES Evaluation; found {shown(data)}")
    if "tests" in data and _all_have(data["tests"], "tool"):
        return read_tool_tests(data, source)
    parts = Path(hint).parts
    if "tool_tests" in parts:
        return read_tool_tests(data, source)
    if "turn_evals" in parts or "tests" in data:
        return read_turn_evals(data, source)
    if "goldens" in parts:
        return read_goldens(data, source)
    if "conversations" in data:
        items = data["conversations"] if isinstance(data["conversations"], list) else []
        if items and all(isinstance(c, dict) and "turns" not in c and ("user" in c or "event" in c) for c in items):
            return read_turn_evals(data, source)
        if items and all(isinstance(c, dict) and _turn_eval_turns(c.get("turns")) for c in items):
            return read_turn_evals(data, source)
        return read_goldens(data, source)
    raise EvalFileError(source, "", "expected goldens ('conversations' with turns), tool tests ('tests' with tool), turn evals "
                        f"('conversations' with expectations) or a CES Evaluation ('golden' or 'scenario'); the file has {sorted(map(str, data))}")


def _all_have(items: Any, key: str) -> bool:
    return isinstance(items, list) and bool(items) and all(isinstance(i, dict) and key in i for i in items)


def _turn_eval_turns(turns: Any) -> bool:
    return isinstance(turns, list) and bool(turns) and all(isinstance(t, dict) and "expectations" in t and "agent" not in t for t in turns)


def files_in(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def load(items: Any) -> tuple[list[Case], Thresholds | None]:
    """Paths (files or folders, searched for .yaml/.yml/.json), Case objects or parsed data, in
    any mix, to cases; the last thresholds file given applies to all of them."""
    if isinstance(items, (str, Path, Case, dict)):
        items = [items]
    cases: list[Case] = []
    thresholds = None
    read: set[Path] = set()  # a folder and a file inside it, or a path twice: each file once

    def once(path: Path) -> None:
        nonlocal thresholds
        resolved = path.resolve()
        if resolved in read:
            return
        read.add(resolved)
        more, t = read_file(path)
        cases.extend(more)
        thresholds = t or thresholds

    for item in _flatten(items):
        if isinstance(item, Case):
            cases.append(item)
        elif isinstance(item, (str, Path)):
            path = Path(item).expanduser()
            if path.is_dir():
                found = files_in(path)
                if not found:
                    raise EvalFileError(str(path), "", "a folder with no .yaml, .yml or .json files")
                for f in found:
                    once(f)
            else:
                once(path)
        elif isinstance(item, Thresholds):
            thresholds = item
        else:
            cases.extend(read_data(item))
    seen: dict[str, int] = {}
    for case in cases:  # a run keys results by case: make the keys unique
        n = seen.get(case.key, 0)
        seen[case.key] = n + 1
        if n:
            case.name = f"{case.name} ({n + 1})"
    return cases, thresholds


def _flatten(items: Iterable[Any]):
    for item in items:
        if isinstance(item, (list, tuple)) and not (item and all(is_evaluation(d) for d in item)):
            yield from _flatten(item)
        else:
            yield item
