"""One conversation case (golden, turn eval, scenario) played in a fresh session and scored.

The session is anything session-like: a notebook `Session`, or the emulator's EvaluationService
playing turns on its own SessionService. This module imports no client, so the emulator shares
it; `runner.py` is the client-facing side (`evaluate`, tool tests over ExecuteTool)."""

from __future__ import annotations

import copy

from .cases import RUBRIC, SCENARIO_CASE, TOOL_CALL, Case, MockAnswer, Thresholds
from .judges import TextSimilarityJudge
from .observe import observe
from .results import CaseResult
from .scoring import score_case_rubrics, score_step, skipped

MAX_TOOL_ROUNDS = 20


def aliased(case: Case, aliases: dict[str, str]) -> Case:
    renamed = [e.expected["tool"] for s in case.steps for e in s.expectations
               if e.kind == TOOL_CALL and isinstance(e.expected, dict) and e.expected.get("tool") in aliases
               and aliases[e.expected["tool"]] != e.expected["tool"]]
    if not renamed and not any(m.tool in aliases and aliases[m.tool] != m.tool for s in case.steps for m in s.mocks):
        return case
    case = copy.deepcopy(case)
    for step in case.steps:
        for e in step.expectations:
            if e.kind == TOOL_CALL and isinstance(e.expected, dict) and e.expected.get("tool"):
                e.expected["tool"] = aliases.get(e.expected["tool"], e.expected["tool"])
        for m in step.mocks:
            m.tool = aliases.get(m.tool, m.tool)
    return case


def run_in_session(session, case: Case, *, judge=None, thresholds: Thresholds | None = None,
                   aliases: dict[str, str] | None = None) -> CaseResult:
    """One conversation case (golden, turn eval, scenario) in the fresh session `session()` makes;
    its CaseResult (never raises for the server's answers).

    The session is anything with `name`, `auto_answer`, `pending` ({call id: ToolCall}), `ended`,
    `send(**inputs) -> Turn` and `respond(answers, how=...) -> Turn`: a notebook `Session`, or
    the emulator's EvaluationService playing turns on its own SessionService. Both are scored
    here, so the notebook, the CLI and the service agree on every verdict."""
    result = new_result(case)
    try:
        _run_conversation(session(), aliased(case, aliases or {}), result, judge or TextSimilarityJudge(),
                          thresholds or Thresholds())
    except Exception as exc:  # the server failed the turn: the case errs, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
    return result.decide()


def new_result(case: Case) -> CaseResult:
    return CaseResult(key=case.key, name=case.name, kind=case.kind, source=case.source, tags=list(case.tags),
                      description=case.description)


def _run_conversation(session, case: Case, result: CaseResult, judge, thresholds: Thresholds) -> None:
    session.auto_answer = False  # this runner answers client tools, from the golden
    result.session = session.name
    variables = dict(case.variables)
    live = []  # the Turns, for the rubric judge's transcript
    for number, step in enumerate(case.steps, 1):
        inputs = dict(step.inputs)
        if number == 1 and variables:
            inputs["variables"] = {**variables, **inputs.get("variables", {})}
        if not inputs:
            result.step_turns.append([])
            continue
        turns = [session.send(**inputs)]
        mocks = list(step.mocks)
        rounds = 0
        while session.pending and rounds < MAX_TOOL_ROUNDS:
            answers = {cid: _answer(call, mocks, result, number) for cid, call in session.pending.items()}
            turns.append(session.respond(answers, how="mock"))
            rounds += 1
        first = len(result.turns)
        live.extend(turns)
        result.turns.extend(t.to_dict() for t in turns)
        result.step_turns.append(list(range(first, len(result.turns))))
        seen = observe(turns)
        result.spans.extend([k, ms] for k, ms in seen.spans)
        for row in score_step(step, seen, judge, step.thresholds and thresholds.merged(step.thresholds) or thresholds, variables):
            row.turn, row.latency_ms = number, seen.latency_ms
            result.expectations.append(row)
        variables.update(step.inputs.get("variables", {}))
        if session.ended:
            rest = case.steps[number:]
            for later, s in enumerate(rest, number + 1):
                for e in s.expectations:
                    row = skipped(e, "the session ended before this turn")
                    row.outcome, row.turn = "FAIL", later
                    result.expectations.append(row)
            break
    if case.kind == SCENARIO_CASE:
        for e in case.expectations:
            result.expectations.append(skipped(e, e.note))
    if any(e.kind == RUBRIC for e in case.expectations) or any(e.kind == RUBRIC for s in case.steps for e in s.expectations):
        conversation = "\n".join(_line(t) for t in live)
        result.expectations.extend(score_case_rubrics(case, conversation, judge))
    latencies = [ms for kind, ms in result.spans if kind == "turn"]
    result.latency_ms = sum(latencies) if latencies else None


def _answer(call, mocks: list[MockAnswer], result: CaseResult, number: int) -> dict:
    """The golden's answer for a client tool call: the first unused one for this tool."""
    for m in mocks:
        if m.tool == call.name or m.tool.rsplit("/", 1)[-1] == call.tool.rsplit("/", 1)[-1]:
            mocks.remove(m)
            return m.response
    result.notes.append(f"turn {number}: the golden has no answer for client tool {call.name}; answered {{}}")
    return {}


def _line(turn) -> str:
    user = turn.user_text
    calls = ", ".join(f"{c.name}({c.args})" for c in turn.tool_calls)
    return f"User: {user}\nAgent: {turn.text}" + (f"\nTool calls: {calls}" if calls else "")


__all__ = ["run_in_session"]
