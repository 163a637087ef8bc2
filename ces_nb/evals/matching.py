"""Tool-call parameters against a golden's args, under cxas-scrapi's `$matchType` markers.

A marker is `{$matchType, $matchValue, $originalValue}` (as scrapi writes them) or
`{value, $matchType}`. Without one a value matches exactly. `semantic` goes to the judge."""

from __future__ import annotations

import json
import re
from typing import Any

PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def expected_value(marker: dict) -> Any:
    for key in ("$matchValue", "value", "$originalValue"):
        if marker.get(key) not in (None, ""):
            return marker[key]
    return ""


def plain(value: Any) -> Any:
    """Args without their markers: what a golden's call would send."""
    if isinstance(value, dict):
        if "$matchType" in value:
            return plain(expected_value(value))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _same_scalar(expected: Any, observed: Any) -> bool:
    if isinstance(expected, bool) or isinstance(observed, bool):  # True == 1 in Python, not in JSON
        return type(expected) is type(observed) and expected == observed
    if expected == observed:
        return True
    if isinstance(expected, (int, float)) and isinstance(observed, (int, float)):
        return float(expected) == float(observed)
    return str(expected) == str(observed) if isinstance(expected, (int, float)) or isinstance(observed, (int, float)) else False


def match_value(expected: Any, observed: Any, judge=None, at: str = "") -> tuple[bool, list[str]]:
    """Whether `observed` matches `expected`; the problems, each naming the argument."""
    where = at or "value"
    if isinstance(expected, dict) and "$matchType" in expected:
        kind = expected["$matchType"]
        want = expected_value(expected)
        if kind == "ignore":
            return True, []
        if observed is None:
            return False, [f"{where}: missing"]
        text = observed if isinstance(observed, str) else json.dumps(observed, sort_keys=True)
        if kind == "contains":
            ok = str(want).lower() in text.lower()
            return ok, [] if ok else [f"{where}: {text!r} does not contain {want!r}"]
        if kind == "regexp":
            ok = re.search(str(want), text) is not None
            return ok, [] if ok else [f"{where}: {text!r} does not match /{want}/"]
        if kind == "semantic":
            if judge is None:
                return False, [f"{where}: semantic match needs a judge"]
            verdict = judge.similarity(str(want), text)
            return verdict.passed, [] if verdict.passed else [f"{where}: {text!r} vs {want!r}: {verdict.explanation}"]
        return match_value(want, observed, judge, at)  # exact
    if isinstance(expected, dict):
        if isinstance(observed, str):
            try:
                observed = json.loads(observed)
            except ValueError:
                pass
        if not isinstance(observed, dict):
            return False, [f"{where}: expected an object, got {json.dumps(observed)}"]
        problems = []
        for key, value in expected.items():
            sub = f"{at}.{key}" if at else key
            if key not in observed:
                if not (isinstance(value, dict) and value.get("$matchType") == "ignore"):
                    problems.append(f"{sub}: missing")
                continue
            problems.extend(match_value(value, observed[key], judge, sub)[1])
        return not problems, problems
    if isinstance(expected, list):
        if not isinstance(observed, list) or len(observed) != len(expected):
            return False, [f"{where}: expected {len(expected)} item(s), got {json.dumps(observed)}"]
        problems = []
        for i, (e, o) in enumerate(zip(expected, observed)):
            problems.extend(match_value(e, o, judge, f"{where}[{i}]")[1])
        return not problems, problems
    ok = _same_scalar(expected, observed)
    return ok, [] if ok else [f"{where}: expected {json.dumps(expected)}, got {json.dumps(observed)}"]


def parameter_correctness(expected: dict, observed: dict, judge=None) -> tuple[float, list[str]]:
    """CES's parameter correctness: the share of the expected parameters the call got right (1.0
    with none expected)."""
    if not expected:
        return 1.0, []
    problems, right = [], 0
    for key, value in expected.items():
        if key not in observed:
            if isinstance(value, dict) and value.get("$matchType") == "ignore":
                right += 1
            else:
                problems.append(f"{key}: missing")
            continue
        ok, more = match_value(value, observed[key], judge, key)
        right += ok
        problems.extend(more)
    return right / len(expected), problems


def subset(expected: Any, observed: Any) -> bool:
    """cxas-scrapi's dict-subset check for turn evals: every expected key with an equal value; {} means 'present'."""
    if isinstance(expected, dict):
        if isinstance(observed, str):
            try:
                observed = json.loads(observed)
            except ValueError:
                return False
        if not isinstance(observed, dict):
            return False
        for k, v in expected.items():
            if k not in observed:
                return False
            if isinstance(v, dict) and not v:
                continue
            if not subset(v, observed[k]):
                return False
        return True
    return expected == observed or str(expected) == str(observed)


def fill(text: str, values: dict) -> str:
    """`{name}` / `{a.b}` placeholders filled from `values` (the observed tool responses and
    variables), as the emulator's playback model fills them; unknown ones are left as they are."""
    def one(m: re.Match) -> str:
        value: Any = values
        for part in m[1].split("."):
            if not isinstance(value, dict) or part not in value:
                return m[0]
            value = value[part]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)

    return PLACEHOLDER.sub(one, text)
