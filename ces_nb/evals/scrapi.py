"""cxas-scrapi's evaluation files -> cases: goldens, tool tests and turn evals (YAML).

Shapes as cxas-scrapi 1.10 reads them (`evals/goldens/*.yaml`, `evals/tool_tests/*.yaml`,
`evals/turn_evals/*.yaml`). A shape that is wrong raises EvalFileError naming the file, the
place inside it and what belongs there."""

from __future__ import annotations

import difflib
import re
from typing import Any

from .cases import (AGENT_RESPONSE, AGENT_TRANSFER, END_SESSION, GOLDEN, MATCH_TYPES, NO_TOOL_CALLS, RUBRIC,
                    TOOL_CALL, TOOL_NOT_CALLED, TOOL_ORDER, TOOL_OUTPUT, TOOL_RESPONSE, TOOL_TEST, TOOL_VARIABLES,
                    TURN_EVAL, Case, Expectation, MockAnswer, Step)
from .errors import EvalFileError, shown

TRANSFER_TOOL, END_TOOL = "transfer_to_agent", "end_session"
TOOL_TEST_OPERATORS = ("equals", "contains", "greater_than", "less_than", "length_equals", "length_greater_than",
                       "length_less_than", "is_null", "is_not_null")
TURN_EVAL_TYPES = ("contains", "not_contains", "equals", "tool_called", "tool_not_called", "tool_input",
                   "tool_output", "no_tools_called", "agent_transfer", "fuzzy_match")
GOLDENS_KEYS = ("conversations", "common_session_parameters", "common_expectations")
CONVERSATION_KEYS = ("conversation", "name", "description", "tags", "session_parameters", "expectations", "turns")
GOLDEN_TURN_KEYS = ("user", "event", "agent", "tool_calls", "variables", "session_parameters")
TOOL_CALL_KEYS = ("action", "args", "output", "agent")
TOOL_TESTS_KEYS = ("tests",)
TOOL_TEST_KEYS = ("name", "description", "tags", "tool", "args", "agrs", "variables", "context", "expectations")
TOOL_TEST_EXPECTATIONS_KEYS = ("response", "variables")
TOOL_TEST_EXPECTATION_KEYS = ("path", "operator", "value")
TURN_EVALS_KEYS = ("conversations", "tests")
TURN_EVAL_KEYS = ("name", "conversation", "description", "tags", "user", "event", "variables", "historical_contexts",
                  "turn_count", "config", "expectations", "turns")
TURN_EVAL_STEP_KEYS = ("turn", "user", "event", "variables", "config", "expectations")
TURN_EXPECTATION_KEYS = ("type", "value")
_EVENT = re.compile(r"<event>\s*(.*?)\s*</event>", re.S | re.I)


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, at: str, problem: str):
        raise EvalFileError(self.source, at, problem)

    def mapping(self, value: Any, at: str, what: str, keys: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            self.fail(at, f"expected {what} (a mapping), found {shown(value)}")
        if keys is not None:
            self.known(value, at, keys)
        return value

    def known(self, d: dict, at: str, keys: tuple[str, ...]) -> None:
        """A misspelt key is an error, not a silently skipped expectation."""
        for key in d:
            if key not in keys:
                near = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                self.fail(f"{at}.{key}" if at else str(key), f"unknown key {str(key)!r}{hint} (expected one of {', '.join(keys)})")

    def nothing_evaluated(self, at: str, what: str) -> None:
        self.fail(at, f"this {what} evaluates nothing: give it expectations (agent, tool_calls, expectations) "
                      "so a wrong answer can fail")

    def listing(self, value: Any, at: str, what: str) -> list:
        if not isinstance(value, list):
            self.fail(at, f"expected {what} (a list), found {shown(value)}")
        return value

    def text(self, value: Any, at: str, what: str) -> str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            self.fail(at, f"expected {what} (a string), found {shown(value)}")
        return str(value)

    def optional_mapping(self, d: dict, key: str, at: str, what: str) -> dict:
        value = d.get(key)
        return {} if value is None else self.mapping(value, f"{at}.{key}" if at else key, what)

    def tags(self, d: dict, at: str) -> list[str]:
        value = d.get("tags")
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [self.text(t, f"{at}.tags[{i}]", "a tag") for i, t in enumerate(self.listing(value, f"{at}.tags", "tags"))]


def check_match_markers(reader: _Reader, value: Any, at: str) -> None:
    """`$matchType` must be one of exact/contains/regexp/semantic/ignore, and a regexp must compile."""
    if isinstance(value, dict):
        if "$matchType" in value:
            match = value["$matchType"]
            if match not in MATCH_TYPES:
                reader.fail(f"{at}.$matchType", f"expected one of {', '.join(MATCH_TYPES)}, found {shown(match)}")
            if match == "regexp":
                from .matching import expected_value

                try:
                    re.compile(str(expected_value(value)))
                except re.error as exc:
                    reader.fail(at, f"$matchType regexp: the pattern does not compile ({exc})")
            return
        for k, v in value.items():
            check_match_markers(reader, v, f"{at}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_match_markers(reader, v, f"{at}[{i}]")


# -- goldens --------------------------------------------------------------------------------

def read_goldens(data: Any, source: str) -> list[Case]:
    r = _Reader(source)
    top = r.mapping(data, "", "a goldens file: a mapping with conversations")
    if "conversations" not in top:
        r.fail("", f"expected a 'conversations' list (cxas-scrapi goldens); the file has {sorted(map(str, top)) or 'no keys'}")
    r.known(top, "", GOLDENS_KEYS)
    common = r.optional_mapping(top, "common_session_parameters", "", "session parameters")
    common_expectations = r.listing(top.get("common_expectations") or [], "common_expectations", "expectations")
    cases = []
    for i, conversation in enumerate(r.listing(top["conversations"], "conversations", "conversations")):
        at = f"conversations[{i}]"
        conversation = r.mapping(conversation, at, "a conversation with turns", CONVERSATION_KEYS)
        name = r.text(conversation.get("conversation") or conversation.get("name") or f"conversation_{i + 1}", f"{at}.conversation", "a name")
        if "turns" not in conversation:
            r.fail(at, "expected 'turns', a list of {user, agent, tool_calls}")
        params = r.optional_mapping(conversation, "session_parameters", at, "session parameters")
        steps = [_golden_step(r, t, f"{at}.turns[{j}]") for j, t in enumerate(r.listing(conversation["turns"], f"{at}.turns", "turns"))]
        expectations = [Expectation(RUBRIC, r.text(e, f"{at}.expectations[{k}]", "an expectation"), at=f"{at}.expectations[{k}]")
                        for k, e in enumerate(r.listing(conversation.get("expectations") or [], f"{at}.expectations", "expectations"))]
        expectations += [Expectation(RUBRIC, r.text(e, f"common_expectations[{k}]", "an expectation"), at=f"common_expectations[{k}]")
                         for k, e in enumerate(common_expectations)]
        cases.append(Case(name=name, kind=GOLDEN, source=source, at=at, tags=r.tags(conversation, at),
                          variables={**common, **params}, steps=steps, expectations=expectations))
    _check_something_evaluated(r, cases, "conversation")
    return cases


def _check_something_evaluated(r: _Reader, cases: list[Case], what: str) -> None:
    for case in cases:
        if not case.expectations and not any(st.expectations for st in case.steps):
            r.nothing_evaluated(case.at, what)


def golden_inputs(r: _Reader, turn: dict, at: str) -> dict:
    event = turn.get("event")
    if isinstance(event, dict):
        event = event.get("event")
    if event:
        return {"event": r.text(event, f"{at}.event", "an event name")}
    if turn.get("user") is None:
        r.fail(at, "expected 'user' (what the user says) or 'event'")
    text = r.text(turn["user"], f"{at}.user", "the user's words")
    m = _EVENT.fullmatch(text.strip())
    return {"event": m[1]} if m else {"text": text}


def _golden_step(r: _Reader, turn: Any, at: str) -> Step:
    turn = r.mapping(turn, at, "a turn with user, agent and tool_calls", GOLDEN_TURN_KEYS)
    step = Step(inputs=golden_inputs(r, turn, at), at=at)
    if "variables" in turn or "session_parameters" in turn:
        step.inputs["variables"] = r.optional_mapping(turn, "variables" if "variables" in turn else "session_parameters", at, "variables")
    names = []
    for k, call in enumerate(r.listing(turn.get("tool_calls") or [], f"{at}.tool_calls", "tool calls")):
        call_at = f"{at}.tool_calls[{k}]"
        call = r.mapping(call, call_at, "a tool call {action, args, output}", TOOL_CALL_KEYS)
        if not call.get("action"):
            r.fail(call_at, f"expected 'action', the tool's display name; the call has {sorted(map(str, call)) or 'no keys'}")
        action = r.text(call["action"], f"{call_at}.action", "the tool's display name")
        args = r.optional_mapping(call, "args", call_at, "the call's args")
        check_match_markers(r, args, f"{call_at}.args")
        if action == TRANSFER_TOOL:
            target = args.get("agent") or args.get("agent_name") or call.get("agent")
            step.expectations.append(Expectation(AGENT_TRANSFER, target, at=call_at))
        elif action == END_TOOL:
            step.expectations.append(Expectation(END_SESSION, args, at=call_at))
        else:
            names.append(action)
            step.expectations.append(Expectation(TOOL_CALL, {"tool": action, "args": args}, at=call_at))
            if call.get("output") is not None:
                output = call["output"]
                step.mocks.append(MockAnswer(action, output if isinstance(output, dict) else {"result": output}))
    if len(names) > 1:
        step.expectations.append(Expectation(TOOL_ORDER, names, at=f"{at}.tool_calls"))
    agent = turn.get("agent")
    if agent is not None:
        step.expectations.append(_agent_expectation(r, agent, f"{at}.agent"))
    return step


def _agent_expectation(r: _Reader, agent: Any, at: str) -> Expectation:
    # cxas-scrapi compares the agent's words semantically; a {$matchType, $matchValue} mapping
    # (our extension; scrapi itself rejects it) picks exact, contains or regexp instead.
    if isinstance(agent, dict):
        check_match_markers(r, agent, at)
        from .matching import expected_value

        match = agent.get("$matchType", "semantic")
        return Expectation(AGENT_RESPONSE, str(expected_value(agent)), match=match, at=at)
    if isinstance(agent, list):
        texts = [r.text(a, f"{at}[{i}]", "the agent's words") for i, a in enumerate(agent)]
        return Expectation(AGENT_RESPONSE, "\n\n".join(t.strip() for t in texts if t.strip()), match="semantic", at=at)
    return Expectation(AGENT_RESPONSE, r.text(agent, at, "the agent's words").strip(), match="semantic", at=at)


# -- tool tests -----------------------------------------------------------------------------

def read_tool_tests(data: Any, source: str) -> list[Case]:
    r = _Reader(source)
    top = r.mapping(data, "", "a tool tests file: a mapping with tests")
    if "tests" not in top:
        r.fail("", f"expected a 'tests' list (cxas-scrapi tool tests; 'test_cases' is not read); the file has {sorted(map(str, top))}")
    r.known(top, "", TOOL_TESTS_KEYS)
    cases = []
    for i, test in enumerate(r.listing(top["tests"], "tests", "tests")):
        at = f"tests[{i}]"
        test = r.mapping(test, at, "a tool test {name, tool, args, expectations}", TOOL_TEST_KEYS)
        if not test.get("tool"):
            r.fail(at, "expected 'tool', the tool's display name")
        name = r.text(test.get("name") or f"test_{i + 1}", f"{at}.name", "a name")
        variables = r.optional_mapping(test, "variables", at, "variables")
        if variables and test.get("context"):
            r.fail(at, "a test gives either 'variables' or 'context', not both")
        args = r.optional_mapping(test, "args" if "args" in test else "agrs", at, "the tool's args")
        expectations = []
        exp = r.optional_mapping(test, "expectations", at, "expectations {response, variables}")
        r.known(exp, f"{at}.expectations", TOOL_TEST_EXPECTATIONS_KEYS)
        for part, kind in (("response", TOOL_RESPONSE), ("variables", TOOL_VARIABLES)):
            for k, item in enumerate(r.listing(exp.get(part) or [], f"{at}.expectations.{part}", f"{part} expectations")):
                e_at = f"{at}.expectations.{part}[{k}]"
                item = r.mapping(item, e_at, "an expectation {path, operator, value}", TOOL_TEST_EXPECTATION_KEYS)
                if not item.get("path"):
                    r.fail(e_at, "expected 'path', a JSONPath such as $.result.status")
                path = r.text(item["path"], f"{e_at}.path", "a JSONPath")
                _check_jsonpath(r, path, f"{e_at}.path")
                operator = item.get("operator")
                if operator not in TOOL_TEST_OPERATORS:
                    r.fail(f"{e_at}.operator", f"expected one of {', '.join(TOOL_TEST_OPERATORS)}, found {shown(operator)}")
                expectations.append(Expectation(kind, item.get("value"), match=operator, at=e_at, path=path))
        cases.append(Case(name=name, kind=TOOL_TEST, source=source, at=at, tags=r.tags(test, at), tool=r.text(test["tool"], f"{at}.tool", "a tool"),
                          args=args, variables=variables, context=r.optional_mapping(test, "context", at, "context"),
                          expectations=expectations))
    return cases


def _check_jsonpath(r: _Reader, path: str, at: str) -> None:
    from jsonpath_ng import parse
    from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError

    try:
        parse(path)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # the lexer raises plain Exceptions too
        r.fail(at, f"not a JSONPath ({exc})")


# -- turn evals -----------------------------------------------------------------------------

def read_turn_evals(data: Any, source: str) -> list[Case]:
    r = _Reader(source)
    top = r.mapping(data, "", "a turn evals file: a mapping with conversations")
    key = "conversations" if "conversations" in top else "tests" if "tests" in top else None
    if key is None:
        r.fail("", f"expected a 'conversations' (or 'tests') list of turn evals; the file has {sorted(map(str, top))}")
    r.known(top, "", TURN_EVALS_KEYS)
    cases = []
    for i, test in enumerate(r.listing(top[key], key, "turn evals")):
        at = f"{key}[{i}]"
        test = r.mapping(test, at, "a turn eval {name, user, expectations}", TURN_EVAL_KEYS)
        name = r.text(test.get("name") or test.get("conversation") or f"turn_eval_{i + 1}", f"{at}.name", "a name")
        if test.get("turns"):
            steps = [_turn_eval_step(r, s, f"{at}.turns[{j}]") for j, s in enumerate(r.listing(test["turns"], f"{at}.turns", "turns"))]
        else:
            steps = [_turn_eval_step(r, test, at, own_keys=False)]
        cases.append(Case(name=name, kind=TURN_EVAL, source=source, at=at, tags=r.tags(test, at),
                          variables=r.optional_mapping(test, "variables", at, "variables"), steps=steps))
    _check_something_evaluated(r, cases, "turn eval")
    return cases


def _turn_eval_step(r: _Reader, d: Any, at: str, own_keys: bool = True) -> Step:
    d = r.mapping(d, at, "a turn {user, expectations}", TURN_EVAL_STEP_KEYS if own_keys else None)
    step = Step(inputs=golden_inputs(r, d, at), at=at)
    if ".turns[" in at and "variables" in d:  # a later step's own variables (a case's go with its first turn)
        step.inputs["variables"] = r.optional_mapping(d, "variables", at, "variables")
    for k, item in enumerate(r.listing(d.get("expectations") or [], f"{at}.expectations", "expectations")):
        e_at = f"{at}.expectations[{k}]"
        if isinstance(item, str):
            step.expectations.append(Expectation(RUBRIC, item, at=e_at))
            continue
        item = r.mapping(item, e_at, "an expectation {type, value} or a sentence", TURN_EXPECTATION_KEYS)
        kind, value = item.get("type"), item.get("value")
        if kind not in TURN_EVAL_TYPES:
            r.fail(f"{e_at}.type", f"expected one of {', '.join(TURN_EVAL_TYPES)}, found {shown(kind)}")
        if kind in ("tool_input", "tool_output") and not isinstance(value, dict):
            r.fail(f"{e_at}.value", f"{kind} takes a mapping of fields the tool's {'args' if kind == 'tool_input' else 'response'} must hold, found {shown(value)}")
        if kind not in ("no_tools_called",) and value is None:
            r.fail(f"{e_at}.value", f"{kind} needs a value")
        step.expectations.append(_turn_expectation(kind, value, e_at))
    return step


def _turn_expectation(kind: str, value: Any, at: str) -> Expectation:
    if kind in ("contains", "not_contains"):
        return Expectation(AGENT_RESPONSE, str(value), match=kind, at=at)
    if kind == "equals":
        return Expectation(AGENT_RESPONSE, str(value), match="exact", at=at)
    if kind == "fuzzy_match":
        return Expectation(AGENT_RESPONSE, str(value), match="semantic", at=at)
    if kind == "tool_called":
        return Expectation(TOOL_CALL, {"tool": str(value), "args": None}, at=at)
    if kind == "tool_not_called":
        return Expectation(TOOL_NOT_CALLED, str(value), at=at)
    if kind == "tool_input":
        return Expectation(TOOL_CALL, {"tool": None, "args": value}, match="subset", at=at)
    if kind == "tool_output":
        return Expectation(TOOL_OUTPUT, value, match="subset", at=at)
    if kind == "no_tools_called":
        return Expectation(NO_TOOL_CALLS, None, at=at)
    return Expectation(AGENT_TRANSFER, str(value), match="exact", at=at)
