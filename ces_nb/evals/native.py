"""Native CES Evaluations (the REST `Evaluation` resource, JSON) -> cases.

Goldens (`golden.turns[].steps[]` of `userInput`, `agentTransfer` and `expectation`), scenarios
(`task`, `userFacts`, `maxTurns`, `scenarioExpectations`, `variableOverrides`) and thresholds
(`evaluationMetricsThresholdOverride`, a turn's `turnLevelMetricsThresholdsOverride`, an
expectation's `expectationLevelMetricsThresholdsOverride`). Parsed with the official
`google.cloud.ces_v1beta.Evaluation` type, so a misspelt field is an error naming it."""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any

from .cases import (AGENT_RESPONSE, AGENT_TRANSFER, END_SESSION, GOLDEN, NO_TOOL_CALLS, RUBRIC, SCENARIO, SCENARIO_CASE, TOOL_CALL,
                    TOOL_ORDER, UPDATED_VARIABLES, Case, Expectation, MockAnswer, Step, Thresholds)
from .errors import EvalFileError, shown

_COMPARISON = {"EQUALS": "exact", "CONTAINS": "contains", "SEMANTIC_SIMILARITY": "semantic"}
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')
_AVAILABLE = re.compile(r'Available Fields\(except extensions\): "(\[.*?\])"', re.S)
_PARSE_AT = re.compile(r' at "?(Evaluation(?:\.\w+(?:\[\d+\])*)*)"?\.*')
NOT_SIMULATED = ("needs a simulated user: CES plays scenarios with an LLM user; offline only the scripted parts "
                 "(variable overrides, mock tool responses) run; not evaluated")


# Evaluation fields the server sets: not what a file means to write
_OUTPUT_ONLY = {"createTime", "createdBy", "updateTime", "lastUpdatedBy", "evaluationRuns", "etag", "aggregatedMetrics",
                "lastCompletedResult", "invalid", "lastTenResults"}


def is_evaluation(data: Any) -> bool:
    return isinstance(data, dict) and ("golden" in data or "scenario" in data)


def is_thresholds(data: Any) -> bool:
    return isinstance(data, dict) and bool({"goldenEvaluationMetricsThresholds", "golden_evaluation_metrics_thresholds"} & set(data))


def _parse(data: dict, message, source: str, at: str) -> dict:
    from google.protobuf import json_format

    try:
        pb = json_format.ParseDict(data, message.pb()())
    except json_format.ParseError as exc:
        text = str(exc)
        m = _PARSE_AT.search(text)
        where = m[1].split(".", 1)[1] if m and "." in m[1] else ""
        problem = _PARSE_AT.sub("", text).rsplit(" field: ", 1)[-1].strip()
        full = ".".join(x for x in (at, where) if x) if not where.startswith("[") else at + where
        unknown = _NO_FIELD.search(text)
        if unknown:  # protobuf's text names the message type; say it as the reader's other errors do
            fields = _AVAILABLE.search(text)
            try:
                known = [f for f in ast.literal_eval(fields[1]) if f not in _OUTPUT_ONLY] if fields else []
            except (ValueError, SyntaxError):
                known = []
            near = difflib.get_close_matches(unknown[1], known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            full = f"{full}.{unknown[1]}" if full else unknown[1]
            raise EvalFileError(source, full, f"unknown field {unknown[1]!r}{hint} (expected one of {', '.join(known)})") from None
        raise EvalFileError(source, full, f"not a CES Evaluation: {problem}") from None
    return json_format.MessageToDict(pb, preserving_proto_field_name=True)


def read_thresholds(data: dict, source: str = "", at: str = "") -> Thresholds:
    from google.cloud import ces_v1beta

    d = _parse(data, ces_v1beta.EvaluationMetricsThresholds, source, at)
    golden = d.get("golden_evaluation_metrics_thresholds") or {}
    turn = golden.get("turn_level_metrics_thresholds") or {}
    expectation = golden.get("expectation_level_metrics_thresholds") or {}
    return Thresholds(
        tool_invocation_parameter_correctness_threshold=expectation.get("tool_invocation_parameter_correctness_threshold"),
        overall_tool_invocation_correctness_threshold=turn.get("overall_tool_invocation_correctness_threshold"),
        semantic_similarity_success_threshold=turn.get("semantic_similarity_success_threshold"),
        extra_tool_call_behavior=(golden.get("tool_matching_settings") or {}).get("extra_tool_call_behavior"),
    )


def read_evaluations(data: Any, source: str) -> list[Case]:
    """One Evaluation, a list of them, or {"evaluations": [...]} (ListEvaluations' answer)."""
    if isinstance(data, dict) and "evaluations" in data:
        items, prefix = data["evaluations"], "evaluations"
    elif isinstance(data, list):
        items, prefix = data, ""
    else:
        return [read_evaluation(data, source, "", strict=True)]
    if not isinstance(items, list):
        raise EvalFileError(source, prefix, f"expected a list of Evaluations, found {shown(items)}")
    return [read_evaluation(e, source, f"{prefix}[{i}]", strict=True) for i, e in enumerate(items)]


def read_evaluation(data: Any, source: str, at: str, strict: bool = False) -> Case:
    """`strict` (files read for a run): a golden that evaluates nothing is an error, so it cannot
    leave CI green. The emulator's EvaluationService reads stored Evaluations without it."""
    from google.cloud import ces_v1beta

    if not is_evaluation(data):
        raise EvalFileError(source, at, f"expected a CES Evaluation (a mapping with 'golden' or 'scenario'), found {shown(data)}")
    d = _parse(data, ces_v1beta.Evaluation, source, at)
    name = d.get("display_name") or (d.get("name") or "").rsplit("/", 1)[-1] or "evaluation"
    pre = f"{at}." if at else ""
    thresholds = None
    if "evaluation_metrics_threshold_override" in data or "evaluationMetricsThresholdOverride" in data:
        raw = data.get("evaluationMetricsThresholdOverride", data.get("evaluation_metrics_threshold_override"))
        thresholds = read_thresholds(raw, source, f"{pre}evaluationMetricsThresholdOverride")
    case = Case(name=name, source=source, at=at, tags=list(d.get("tags") or []), thresholds=thresholds,
                description=d.get("description", ""))
    if "scenario" in d:
        return _scenario(case, d["scenario"], f"{pre}scenario")
    case.kind = GOLDEN
    golden = d.get("golden") or {}
    for t, turn in enumerate(golden.get("turns") or []):
        case.steps.extend(_golden_turn(turn, f"{pre}golden.turns[{t}]"))
    for k, e in enumerate(golden.get("evaluation_expectations") or []):
        case.expectations.append(Expectation(RUBRIC, e, at=f"{pre}golden.evaluationExpectations[{k}]",
                                             note="an EvaluationExpectation (LLM-judged)"))
    if strict and not case.expectations and not any(st.expectations for st in case.steps):
        raise EvalFileError(source, f"{pre}golden", "this golden evaluates nothing: give its turns expectations "
                            "(agentResponse, toolCall, agentTransfer, ...) so a wrong answer can fail")
    return case


def _golden_turn(turn: dict, at: str) -> list[Step]:
    """A GoldenTurn's steps. Inputs after expectations start a new user turn (a golden turn
    usually holds one; tool responses resume the same one)."""
    steps: list[Step] = []
    step: Step | None = None
    for s, item in enumerate(turn.get("steps") or []):
        s_at = f"{at}.steps[{s}]"
        if "user_input" in item:
            user = item["user_input"]
            if "tool_responses" in user:
                if step is not None:
                    for r in user["tool_responses"].get("tool_responses") or []:
                        step.mocks.append(MockAnswer(_tool_name(r), r.get("response") or {}))
                continue
            if step is None or step.expectations or any(k in step.inputs for k in ("text", "event", "dtmf")) and "variables" not in user:
                step = Step(at=s_at)
                steps.append(step)
            _input(step, user)
        elif "agent_transfer" in item:
            step = step or _new(steps, s_at)
            step.expectations.append(Expectation(AGENT_TRANSFER, _target(item["agent_transfer"]), at=f"{s_at}.agentTransfer"))
        elif "expectation" in item:
            step = step or _new(steps, s_at)
            _expectation(step, item["expectation"], s_at)
    override = turn.get("turn_level_metrics_thresholds_override")
    for st in steps:
        if override:
            st.thresholds = Thresholds(overall_tool_invocation_correctness_threshold=override.get("overall_tool_invocation_correctness_threshold"),
                                       semantic_similarity_success_threshold=override.get("semantic_similarity_success_threshold"))
        names = [e.expected["tool"] for e in st.expectations if e.kind == TOOL_CALL]
        if len(names) > 1:
            st.expectations.append(Expectation(TOOL_ORDER, names, at=f"{at}.steps"))
    return steps


def _new(steps: list[Step], at: str) -> Step:
    step = Step(at=at)
    steps.append(step)
    return step


def _input(step: Step, user: dict) -> None:
    if "text" in user:
        step.inputs["text"] = user["text"]
    elif "dtmf" in user:
        step.inputs["dtmf"] = user["dtmf"]
    elif "event" in user:
        step.inputs["event"] = (user["event"] or {}).get("event", "")
    elif "variables" in user:
        step.inputs["variables"] = {**step.inputs.get("variables", {}), **(user["variables"] or {})}
    elif "image" in user or "blob" in user:
        kind = "image" if "image" in user else "blob"
        step.inputs[kind] = user[kind]


def _tool_name(call: dict) -> str:
    if call.get("display_name"):
        return call["display_name"]
    if call.get("toolset_tool"):
        return call["toolset_tool"].get("tool_id", "")
    return (call.get("tool") or "").rsplit("/", 1)[-1]


def _target(transfer: dict) -> str:
    return (transfer or {}).get("display_name") or ((transfer or {}).get("target_agent") or "").rsplit("/", 1)[-1]


def _expectation(step: Step, e: dict, at: str) -> None:
    threshold = (e.get("expectation_level_metrics_thresholds_override") or {}).get("tool_invocation_parameter_correctness_threshold")
    note = e.get("note", "")
    skip = bool(e.get("skip_evaluation"))
    made: Expectation | None = None
    if "tool_call" in e and _tool_name(e["tool_call"]) == "end_session":  # the system tool: as the scrapi reader reads it
        made = Expectation(END_SESSION, e["tool_call"].get("args") or {}, at=f"{at}.expectation.toolCall")
    elif "tool_call" in e:
        call = e["tool_call"]
        made = Expectation(TOOL_CALL, {"tool": _tool_name(call), "args": call.get("args") or {}}, at=f"{at}.expectation.toolCall")
        if threshold is not None:
            made.expected["threshold"] = threshold
    elif "tool_response" in e or "mock_tool_response" in e:
        r = e.get("tool_response") or e.get("mock_tool_response")
        step.mocks.append(MockAnswer(_tool_name(r), r.get("response") or {}))
    elif "agent_response" in e:
        chunks = (e["agent_response"] or {}).get("chunks") or []
        text = "\n\n".join(c.get("text") or c.get("transcript") for c in chunks if c.get("text") or c.get("transcript"))
        match = _COMPARISON.get(e.get("comparison_type", ""), "semantic")
        made = Expectation(AGENT_RESPONSE, text, match=match, at=f"{at}.expectation.agentResponse")
    elif "agent_transfer" in e:
        made = Expectation(AGENT_TRANSFER, _target(e["agent_transfer"]), at=f"{at}.expectation.agentTransfer")
    elif "updated_variables" in e:
        made = Expectation(UPDATED_VARIABLES, e["updated_variables"], at=f"{at}.expectation.updatedVariables")
    elif "no_tool_calls" in e:
        made = Expectation(NO_TOOL_CALLS, None, at=f"{at}.expectation.noToolCalls")
    if made is not None:
        if skip:
            made.note = "skipEvaluation: replayed, not scored"
        elif note:
            made.note = note
        step.expectations.append(made)


def _scenario(case: Case, scenario: dict, at: str) -> Case:
    """What runs offline: the variable overrides (sent as the session starts) and the mock
    tool responses. Every expectation needs the simulated user, so each is SKIPPED, saying why."""
    case.kind = SCENARIO_CASE
    case.variables = dict(scenario.get("variable_overrides") or {})
    facts = "; ".join(f"{f.get('name')}: {f.get('value')}" for f in scenario.get("user_facts") or [])
    case.description = "\n".join(x for x in (case.description, f"task: {scenario.get('task', '')}",
                                             f"user facts: {facts}" if facts else "",
                                             f"max turns: {scenario['max_turns']}" if scenario.get("max_turns") else "") if x)
    step = Step(at=at)
    case.steps.append(step)
    for k, e in enumerate(scenario.get("scenario_expectations") or []):
        e_at = f"{at}.scenarioExpectations[{k}]"
        tool = e.get("tool_expectation")
        if tool:
            call = tool.get("expected_tool_call") or {}
            if tool.get("mock_tool_response"):
                step.mocks.append(MockAnswer(_tool_name(call or tool["mock_tool_response"]), tool["mock_tool_response"].get("response") or {}))
            case.expectations.append(Expectation(SCENARIO, {"tool": _tool_name(call), "args": call.get("args") or {}}, at=e_at, note=NOT_SIMULATED))
        elif "agent_response" in e:
            text = " ".join(c.get("text", "") for c in (e["agent_response"] or {}).get("chunks") or [])
            case.expectations.append(Expectation(SCENARIO, text, at=e_at, note=NOT_SIMULATED))
    for k, rubric in enumerate(scenario.get("rubrics") or []):
        case.expectations.append(Expectation(SCENARIO, rubric, at=f"{at}.rubrics[{k}]", note=NOT_SIMULATED))
    case.expectations.append(Expectation(SCENARIO, scenario.get("task", ""), at=f"{at}.task", note=NOT_SIMULATED))
    return case
