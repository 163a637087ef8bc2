"""Expectations against observations -> ExpectationResults, with CES's metric names.

The functions the runner (and the emulator's EvaluationService) call:

* `score_step(step, observation, judge, thresholds, variables)`: one user turn of a golden or
  turn eval;
* `score_case_rubrics(case, transcript_text, judge)`: a case's natural-language expectations;
* `score_tool_test(case, response, variables)`: one tool test against ExecuteTool's answer;
* `skipped(expectation, why)`: a row for what was not evaluated.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .cases import (AGENT_RESPONSE, AGENT_TRANSFER, END_SESSION, METRICS, NO_TOOL_CALLS, RUBRIC, TOOL_CALL,
                    TOOL_NOT_CALLED, TOOL_ORDER, TOOL_OUTPUT, TOOL_RESPONSE, UPDATED_VARIABLES, Case,
                    Expectation, Step, Thresholds)
from .judges import TextSimilarityJudge
from .matching import fill, match_value, parameter_correctness, subset
from .observe import Observation
from .results import FAIL, PASS, SKIPPED, ExpectationResult

DEFAULT_PARAMETER_THRESHOLD = 1.0   # every parameter right, unless the file says otherwise


def _row(e: Expectation, observed: Any, ok: bool | None, score: float | None = None, why: str = "") -> ExpectationResult:
    outcome = SKIPPED if ok is None else PASS if ok else FAIL
    return ExpectationResult(kind=e.kind, metric=METRICS.get(e.kind, e.kind), expected=e.expected, observed=observed,
                             outcome=outcome, score=score, explanation=why, match=e.match, at=e.at)


def skipped(e: Expectation, why: str) -> ExpectationResult:
    return _row(e, None, None, None, why)


def _same_tool(expected: str, observed: str) -> bool:
    return expected == observed or expected.rsplit("/", 1)[-1] == observed.rsplit("/", 1)[-1]


def score_step(step: Step, seen: Observation, judge=None, thresholds: Thresholds | None = None,
               variables: dict | None = None) -> list[ExpectationResult]:
    judge = judge or TextSimilarityJudge()
    thresholds = thresholds or Thresholds()
    values = seen.values(variables or {})
    unused = list(seen.calls)  # each observed call satisfies one expected call, in order
    rows = []
    together = _responses_together(step)
    for e in step.expectations:
        if e.note.startswith("skipEvaluation") or e.kind == RUBRIC:  # rubrics: score_case_rubrics
            continue
        if together is not None and e in together[1]:
            row = _score(together[0], seen, unused, judge, thresholds, values)
            row.at = e.at
            if len(together[1]) > 1:
                row.explanation = f"the turn's {len(together[1])} agent responses, compared together: {row.explanation}"
            rows.append(row)
            continue
        rows.append(_score(e, seen, unused, judge, thresholds, values))
    if thresholds.extra_tool_call_behavior == "FAIL" and any(e.kind == TOOL_CALL for e in step.expectations):
        for call in unused:
            e = Expectation(TOOL_CALL, None, at=step.at, note="extra tool call")
            rows.append(_row(e, {"tool": call.name, "args": call.args}, False, 0.0,
                             f"{call.name} was called and the golden does not expect it (extraToolCallBehavior FAIL)"))
    return rows


def _responses_together(step: Step) -> tuple[Expectation, list[Expectation]] | None:
    """A turn's several agent-response expectations (a CES golden lists each agent message as
    its own) compared as one text with all the turn said, as a scrapi golden's list of agent
    lines is: the same golden gets the same verdict in either format. None for one or none."""
    responses = [e for e in step.expectations if e.kind == AGENT_RESPONSE and not e.note.startswith("skipEvaluation")]
    if len(responses) < 2 or len({e.match for e in responses}) > 1 or responses[0].match not in ("semantic", "exact"):
        return None
    joined = "\n\n".join(str(e.expected or "").strip() for e in responses if str(e.expected or "").strip())
    return Expectation(AGENT_RESPONSE, joined, match=responses[0].match, at=responses[0].at), responses


def _score(e: Expectation, seen: Observation, unused: list, judge, t: Thresholds, values: dict) -> ExpectationResult:
    if e.kind == TOOL_CALL:
        return _tool_call(e, seen, unused, judge, t)
    if e.kind == TOOL_ORDER:
        names = [c.name for c in seen.calls]
        observed = [n for n in names if any(_same_tool(x, n) for x in e.expected)]
        score = _ordered_share(e.expected, observed)
        return _row(e, names, score == 1.0, score, "" if score == 1.0 else f"called in the order {observed}, expected {e.expected}")
    if e.kind == TOOL_NOT_CALLED:
        names = [c.name for c in seen.calls]
        hit = any(_same_tool(e.expected, n) or n.endswith(e.expected) for n in names)
        return _row(e, names, not hit, 0.0 if hit else 1.0, f"{e.expected} was called" if hit else "")
    if e.kind == NO_TOOL_CALLS:
        names = [c.name for c in seen.calls]
        return _row(e, names, not names, 0.0 if names else 1.0, f"tools were called: {names}" if names else "")
    if e.kind == TOOL_OUTPUT:
        responses = [c.response for c in seen.calls if c.response is not None]
        ok = any(subset(e.expected, r) for r in responses)
        return _row(e, responses, ok, 1.0 if ok else 0.0, "" if ok else "no tool response holds these fields")
    if e.kind == AGENT_TRANSFER:
        want = str(e.expected or "")
        ok = any(_agent_is(want, got) for got in seen.transfers)
        return _row(e, seen.transfers, ok, 1.0 if ok else 0.0, "" if ok else
                    (f"transferred to {', '.join(seen.transfers)}" if seen.transfers else "no transfer"))
    if e.kind == END_SESSION:
        if not seen.ended:
            return _row(e, None, False, 0.0, "the session did not end")
        # end_session's args (its reason) are scored as any tool call's parameters are, under their $matchType
        expected = e.expected or {}
        threshold = t.tool_invocation_parameter_correctness_threshold
        threshold = DEFAULT_PARAMETER_THRESHOLD if threshold is None else threshold
        score, problems = parameter_correctness(expected, seen.end_args or {}, judge)
        return _row(e, seen.end_args, score >= threshold, round(score, 4),
                    "; ".join(problems) + (f" (parameter correctness {score:.2f} < {threshold:.2f})" if score < threshold else ""))
    if e.kind == UPDATED_VARIABLES:
        expected = e.expected or {}
        right = [k for k, v in expected.items() if k in seen.variables and match_value(v, seen.variables[k])[0]]
        score = len(right) / len(expected) if expected else 1.0
        wrong = [k for k in expected if k not in right]
        return _row(e, seen.variables, score == 1.0, score, f"not updated as expected: {', '.join(wrong)}" if wrong else "")
    if e.kind == AGENT_RESPONSE:
        return _agent_response_of(e, seen, judge, t, values)
    if e.kind == RUBRIC:
        return skipped(e, "a natural-language expectation; judged per case")
    return skipped(e, f"unknown expectation kind {e.kind}")


def _agent_is(want: str, got: str) -> bool:
    norm = lambda s: re.sub(r"[\s_-]+", " ", s).strip().lower()  # noqa: E731  "Returns Agent" ~ "returns_agent" ~ "returns-agent"
    # the exact display name or id, or a resource name's id; never a name's tail ("Agent" is not "Booking Agent")
    return norm(want) == norm(got) or norm(want.rsplit("/", 1)[-1]) == norm(got.rsplit("/", 1)[-1])


def _ordered_share(expected: list[str], observed: list[str]) -> float:
    """The longest common subsequence of the two name lists, over the expected length."""
    if not expected:
        return 1.0
    table = [[0] * (len(observed) + 1) for _ in range(len(expected) + 1)]
    for i, a in enumerate(expected):
        for j, b in enumerate(observed):
            table[i + 1][j + 1] = table[i][j] + 1 if _same_tool(a, b) else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1] / len(expected)


def _tool_call(e: Expectation, seen: Observation, unused: list, judge, t: Thresholds) -> ExpectationResult:
    want = e.expected or {}
    tool, args = want.get("tool"), want.get("args")
    if e.match == "subset":  # turn evals' tool_input: any call whose args hold these
        hit = next((c for c in seen.calls if subset(args, c.args)), None)
        observed = [{"tool": c.name, "args": c.args} for c in seen.calls]
        return _row(e, observed, hit is not None, 1.0 if hit else 0.0, "" if hit else "no tool call holds these args")
    candidates = [c for c in unused if _same_tool(tool, c.name)]
    if not candidates:
        called = [c.name for c in seen.calls]
        return _row(e, {"tool": None, "called": called}, False, 0.0, f"{tool} was not called" + (f" (called: {', '.join(called)})" if called else ""))
    if args is None:  # tool_called: the name is all
        unused.remove(candidates[0])
        return _row(e, {"tool": candidates[0].name, "args": candidates[0].args}, True, 1.0)
    threshold = want.get("threshold", t.tool_invocation_parameter_correctness_threshold)
    threshold = DEFAULT_PARAMETER_THRESHOLD if threshold is None else threshold
    best = max(candidates, key=lambda c: parameter_correctness(args, c.args, judge)[0])
    unused.remove(best)
    score, problems = parameter_correctness(args, best.args, judge)
    return _row(e, {"tool": best.name, "args": best.args}, score >= threshold, round(score, 4),
                "; ".join(problems) + (f" (parameter correctness {score:.2f} < {threshold:.2f})" if score < threshold else ""))


def _agent_response_of(e: Expectation, seen: Observation, judge, t: Thresholds, values: dict) -> ExpectationResult:
    """One expected line against a turn where the agent said several messages: CES lists each
    agent message as its own expectation, so the line is compared with each message and with
    all of them joined; the best score counts, and the explanation says which it was."""
    whole = _agent_response(e, seen.text, judge, t, values)
    messages = seen.messages
    expected_lines = [x for x in str(e.expected or "").split("\n\n") if x.strip()]
    if len(messages) < 2 or len(expected_lines) > 1 or e.match not in ("semantic", "exact"):
        return whole
    best, which = whole, "all its messages joined"
    for i, message in enumerate(messages, 1):
        row = _agent_response(e, message, judge, t, values)
        if (row.outcome == PASS and best.outcome != PASS) or (row.outcome == best.outcome and (row.score or 0) > (best.score or 0)):
            best, which = row, f"message {i} of {len(messages)}"
    best.observed = seen.text
    best.explanation = (f"one expected line; the agent said {len(messages)} messages: compared with each and with all "
                        f"joined, best: {which}" + (f"; {best.explanation}" if best.explanation else ""))
    return best


def _agent_response(e: Expectation, text: str, judge, t: Thresholds, values: dict) -> ExpectationResult:
    want = fill(str(e.expected or ""), values)
    got = text.strip()
    if e.match == "exact":
        ok = _squash(got) == _squash(want)
        return _row(e, got, ok, 1.0 if ok else 0.0, "" if ok else "the text differs")
    if e.match == "contains":
        ok = want.lower() in got.lower()
        return _row(e, got, ok, 1.0 if ok else 0.0, "" if ok else f"does not contain {want!r}")
    if e.match == "not_contains":
        ok = want.lower() not in got.lower()
        return _row(e, got, ok, 1.0 if ok else 0.0, "" if ok else f"contains {want!r}")
    if e.match == "regexp":
        ok = re.search(want, got) is not None
        return _row(e, got, ok, 1.0 if ok else 0.0, "" if ok else f"does not match /{want}/")
    if e.match == "endswith":
        ok = got.endswith(want)
        return _row(e, got, ok, 1.0 if ok else 0.0)
    threshold = None
    if t.semantic_similarity_success_threshold is not None and not isinstance(judge, TextSimilarityJudge):
        threshold = t.semantic_similarity_success_threshold
    verdict = judge.similarity(want, got, threshold)
    row = _row(e, got, verdict.passed, verdict.score, f"{verdict.label}: {verdict.explanation}")
    row.expected = want
    return row


def _squash(text: str) -> str:
    return " ".join(text.split())


def score_case_rubrics(case: Case, conversation: str, judge=None) -> list[ExpectationResult]:
    """The case's (and its steps') natural-language expectations, by a judge that can read them."""
    judge = judge or TextSimilarityJudge()
    rows = []
    for e in [x for s in case.steps for x in s.expectations if x.kind == RUBRIC] + [x for x in case.expectations if x.kind == RUBRIC]:
        verdict = judge.rubric(str(e.expected), conversation)
        if verdict is None:
            rows.append(skipped(e, f"needs an LLM judge ({judge.name} cannot judge sentences); not evaluated"))
        else:
            rows.append(_row(e, None, verdict.passed, verdict.score, f"{verdict.label}: {verdict.explanation}"))
    return rows


# -- tool tests -------------------------------------------------------------------------------

def json_path(data: Any, path: str) -> Any:
    """cxas-scrapi's lookup: one match is its value, several a list, none None. A python tool's
    answer sits under `result` on CES; `$.result.x` also finds `x` in a response that has no
    `result` key (the emulator answers with the returned dict itself)."""
    from jsonpath_ng import parse

    matches = parse(path).find(data)
    if not matches and path.startswith("$.result") and isinstance(data, dict) and "result" not in data:
        matches = parse("$" + path[len("$.result"):]).find(data) if path != "$.result" else []
        if path == "$.result":
            return data
    if not matches:
        return None
    return [m.value for m in matches] if len(matches) > 1 else matches[0].value


def check_operator(actual: Any, operator: str, expected: Any) -> bool:
    """cxas-scrapi's tool-test operators."""
    try:
        if operator == "equals":
            return actual == expected
        if operator == "contains":
            return isinstance(actual, (str, list, dict)) and expected in actual
        if operator == "greater_than":
            return actual > expected
        if operator == "less_than":
            return actual < expected
        if operator == "length_equals":
            return len(actual) == expected
        if operator == "length_greater_than":
            return len(actual) > expected
        if operator == "length_less_than":
            return len(actual) < expected
        if operator == "is_null":
            return actual is None
        if operator == "is_not_null":
            return actual is not None
    except TypeError:
        return False
    return False


def score_tool_test(case: Case, response: Any, variables: dict | None = None) -> list[ExpectationResult]:
    rows = []
    for e in case.expectations:
        data = response if e.kind == TOOL_RESPONSE else (variables or {})
        actual = json_path(data, e.path)
        ok = check_operator(actual, e.match, e.expected)
        row = _row(e, actual, ok, 1.0 if ok else 0.0, "" if ok else
                   f"{e.path} is {json.dumps(actual, default=str)}; expected {e.match} {json.dumps(e.expected, default=str)}")
        row.expected = {"path": e.path, "operator": e.match, "value": e.expected}
        rows.append(row)
    if not rows:
        e = Expectation(TOOL_RESPONSE, None, match="runs", at=case.at)
        rows.append(_row(e, response, True, 1.0, "no expectations: the tool ran"))
    return rows


__all__ = ["score_step", "score_case_rubrics", "score_tool_test", "skipped", "json_path", "check_operator"]
