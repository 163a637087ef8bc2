"""A `CaseResult` from the evaluation engine -> CES's `EvaluationResult`, field for field.

Each engine row (`ExpectationResult`) says where its expectation sits in the Evaluation (`at`,
e.g. `golden.turns[1].steps[2].expectation.toolCall`). That puts it in its turn's
`TurnReplayResult.expectation_outcome`, beside the golden's own `GoldenExpectation`; the turn's
`semantic_similarity_result`, `tool_invocation_score`, `tool_ordered_invocation_score` and
`overall_tool_invocation_result` come from the same rows. Natural-language expectations go to
`evaluation_expectation_results`; a scenario's to `scenario_result`."""

from __future__ import annotations

import datetime
import re

from google.cloud import ces_v1beta

from ..evals.cases import AGENT_RESPONSE, AGENT_TRANSFER, END_SESSION, RUBRIC, TOOL_CALL, TOOL_ORDER
from ..evals.results import ERROR, FAIL, PASS, SKIPPED, CaseResult, ExpectationResult

Result = ces_v1beta.EvaluationResult
Outcome = Result.Outcome
OUTCOMES = {PASS: Outcome.PASS, FAIL: Outcome.FAIL, SKIPPED: Outcome.SKIPPED, ERROR: Outcome.FAIL}
_AT = re.compile(r"^golden\.turns\[(\d+)\](?:\.steps\[(\d+)\](?:\.(expectation|agentTransfer))?)?")
_RUBRIC_AT = re.compile(r"^golden\.evaluationExpectations\[(\d+)\]")
_SCENARIO_AT = re.compile(r"^scenario\.scenarioExpectations\[(\d+)\]")
SEMANTIC_SCALE = 4  # CES scores semantic similarity 0..4; the offline judge's 0..1 is scaled to it


def evaluation_result(case: CaseResult, evaluation: ces_v1beta.Evaluation, name: str, run: str,
                      conversation: str, created: datetime.datetime,
                      display_names: dict[str, str] | None = None) -> ces_v1beta.EvaluationResult:
    """`display_names`: the app's tool and agent resource names -> display names, to fill the
    output-only `display_name` of the expectations the result echoes, as CES does."""
    result = Result(name=name, display_name=evaluation.display_name, create_time=created, evaluation_run=run,
                    evaluation_status=OUTCOMES.get(case.outcome, Outcome.OUTCOME_UNSPECIFIED),
                    execution_state=Result.ExecutionState.ERROR if case.error else Result.ExecutionState.COMPLETED,
                    golden_run_method=ces_v1beta.GoldenRunMethod.STABLE)
    if case.outcome == SKIPPED:
        result.evaluation_status = Outcome.SKIPPED
    if case.error:
        result.error_info = ces_v1beta.EvaluationErrorInfo(
            error_type=ces_v1beta.EvaluationErrorInfo.ErrorType.RUNTIME_FAILURE, error_message=case.error,
            user_facing_error_message=case.error, session_id=conversation.rsplit("/", 1)[-1])
    if "scenario" in evaluation:
        result.scenario_result = _scenario(case, evaluation.scenario, conversation)
    else:
        result.golden_result = _golden(case, evaluation.golden, conversation, display_names or {})
    return result


def _golden(case: CaseResult, golden, conversation: str, display_names: dict[str, str]):
    app = conversation.split("/conversations/")[0]
    turns = [Result.GoldenResult.TurnReplayResult(conversation=conversation) for _ in golden.turns]
    rows_by_turn: dict[int, list[ExpectationResult]] = {}
    out = Result.GoldenResult(evaluation_expectation_results=[])
    for row in case.expectations:
        rubric = _RUBRIC_AT.match(row.at or "")
        if rubric or row.kind == RUBRIC:
            k = int(rubric[1]) if rubric else -1
            ref = golden.evaluation_expectations[k] if 0 <= k < len(golden.evaluation_expectations) else ""
            out.evaluation_expectation_results.append(Result.EvaluationExpectationResult(
                evaluation_expectation=ref, prompt=str(row.expected or ""), outcome=OUTCOMES[row.outcome], explanation=row.explanation))
            continue
        m = _AT.match(row.at or "")
        t = int(m[1]) if m else max(row.turn - 1, 0)
        if t >= len(turns):
            continue
        rows_by_turn.setdefault(t, []).append(row)
        if row.kind == TOOL_ORDER:
            turns[t].tool_ordered_invocation_score = row.score or 0.0
            continue
        step = golden.turns[t].steps[int(m[2])] if m and m[2] is not None and int(m[2]) < len(golden.turns[t].steps) else None
        turns[t].expectation_outcome.append(_outcome(row, step, m[3] if m else None, app, display_names))
    for t, rows in rows_by_turn.items():
        _turn_metrics(turns[t], rows)
    out.turn_replay_results.extend(turns)
    return out


def _outcome(row: ExpectationResult, step, where: str | None, app: str, display_names: dict[str, str]):
    o = Result.GoldenExpectationOutcome(outcome=OUTCOMES[row.outcome])
    if step is not None and where == "expectation":
        o.expectation = step.expectation
    elif step is not None and where == "agentTransfer":
        o.expectation = ces_v1beta.Evaluation.GoldenExpectation(agent_transfer=step.agent_transfer)
    else:  # a row the golden has no expectation for: an extra tool call
        o.expectation = ces_v1beta.Evaluation.GoldenExpectation(note=row.explanation or row.kind)
    for part, ref in (("tool_call", "tool"), ("agent_transfer", "target_agent")):
        echoed = getattr(o.expectation, part) if part in o.expectation else None
        if echoed is not None and not echoed.display_name and getattr(echoed, ref) in display_names:
            echoed.display_name = display_names[getattr(echoed, ref)]
    observed = row.observed
    if row.kind in (TOOL_CALL, END_SESSION):
        call = observed if isinstance(observed, dict) else {}
        tool = call.get("tool") or ("end_session" if row.kind == END_SESSION and observed is not None else None)
        if tool:
            o.observed_tool_call = ces_v1beta.ToolCall(tool=f"{app}/tools/{tool}", display_name=tool,
                                                       args=call.get("args") if call.get("tool") else call or {})
        if row.kind == TOOL_CALL:
            o.tool_invocation_result = Result.GoldenExpectationOutcome.ToolInvocationResult(
                parameter_correctness_score=row.score or 0.0, outcome=OUTCOMES[row.outcome], explanation=row.explanation)
    elif row.kind == AGENT_RESPONSE:
        o.observed_agent_response = ces_v1beta.Message(role="agent", chunks=[ces_v1beta.Chunk(text=str(observed or ""))])
        o.semantic_similarity_result = _semantic(row)
    elif row.kind == AGENT_TRANSFER and observed:
        target = observed[0]
        o.observed_agent_transfer = ces_v1beta.AgentTransfer(target_agent=f"{app}/agents/{target}", display_name=target)
    return o


def _semantic(row: ExpectationResult):
    score = row.score if row.score is not None else (1.0 if row.outcome == PASS else 0.0)
    label = row.explanation.split(":", 1)[0] if row.match == "semantic" and ":" in row.explanation else row.match
    return Result.SemanticSimilarityResult(score=round(score * SEMANTIC_SCALE) if score <= 1 else round(score),
                                           label=label, explanation=row.explanation, outcome=OUTCOMES[row.outcome])


def _turn_metrics(turn, rows: list[ExpectationResult]) -> None:
    tools = [r for r in rows if r.kind == TOOL_CALL]
    if tools:
        score = sum(r.score or 0.0 for r in tools) / len(tools)
        turn.tool_invocation_score = score
        turn.overall_tool_invocation_result = Result.OverallToolInvocationResult(
            tool_invocation_score=score, outcome=Outcome.FAIL if any(r.outcome in (FAIL, ERROR) for r in tools) else Outcome.PASS)
    texts = [r for r in rows if r.kind == AGENT_RESPONSE]
    if texts:  # the turn's verdict is its worst response
        turn.semantic_similarity_result = _semantic(min(texts, key=lambda r: (r.outcome == PASS, r.score or 0.0)))
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    if latencies:
        turn.turn_latency = datetime.timedelta(milliseconds=max(latencies))


def _scenario(case: CaseResult, scenario, conversation: str):
    out = Result.ScenarioResult(conversation=conversation, task=scenario.task, user_facts=list(scenario.user_facts))
    for row in case.expectations:
        m = _SCENARIO_AT.match(row.at or "")
        if m and int(m[1]) < len(scenario.scenario_expectations):
            out.expectation_outcomes.append(Result.ScenarioExpectationOutcome(
                expectation=scenario.scenario_expectations[int(m[1])], outcome=OUTCOMES[row.outcome]))
    return out
