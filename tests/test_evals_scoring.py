"""The scoring API the runner (and the emulator's EvaluationService) builds on, on plain records:
no server needed, so each metric's edge is checked directly."""

from __future__ import annotations

import pytest

from ces_nb.evals import Expectation, Step, TextSimilarityJudge, Thresholds
from ces_nb.evals.matching import fill, match_value, parameter_correctness
from ces_nb.evals.observe import Observation, ObservedCall
from ces_nb.evals.scoring import check_operator, json_path, score_step


def seen(**kw) -> Observation:
    return Observation(**{"text": "", "calls": [], **kw})


def outcomes(step, observation, **kw) -> list[tuple[str, str]]:
    return [(r.kind, r.outcome) for r in score_step(step, observation, **kw)]


def test_parameter_correctness_is_the_share_of_parameters_right():
    expected = {"a": 1, "b": {"$matchType": "contains", "$matchValue": "ell"}, "c": {"$matchType": "ignore"}, "d": "x"}
    score, problems = parameter_correctness(expected, {"a": 1.0, "b": "hello", "d": "y"})
    assert score == 0.75 and problems == ['d: expected "x", got "y"']
    assert parameter_correctness({}, {"anything": 1})[0] == 1.0
    assert match_value({"n": [1, 2]}, {"n": [1, 3]})[1] == ["n[1]: expected 2, got 3"]
    assert match_value({"$matchType": "regexp", "$matchValue": r"^\d{3}$"}, "123")[0]
    assert not match_value(True, 1)[0]  # a boolean is not a number


def test_each_expectation_kind():
    step = Step(expectations=[
        Expectation("tool_call", {"tool": "lookup", "args": {"id": "A1"}}),
        Expectation("tool_call", {"tool": "lookup", "args": {"id": "B2"}}),
        Expectation("tool_order", ["lookup", "refund"]),
        Expectation("agent_transfer", "Returns Agent"),
        Expectation("updated_variables", {"pet": "Max"}),
        Expectation("end_session", {"reason": {"$matchType": "ignore"}}),
        Expectation("agent_response", "Your order {id} shipped", match="exact"),
        Expectation("no_tool_calls"),
        Expectation("tool_not_called", "refund"),
    ])
    observation = seen(text="Your order A1 shipped", calls=[ObservedCall("lookup", {"id": "A1"}, "1", {"id": "A1"})],
                       transfers=["returns_agent"], variables={"pet": "Max"}, ended=True, end_args={"reason": "done"})
    assert outcomes(step, observation) == [
        ("tool_call", "PASS"), ("tool_call", "FAIL"), ("tool_order", "FAIL"), ("agent_transfer", "PASS"),
        ("updated_variables", "PASS"), ("end_session", "PASS"), ("agent_response", "PASS"), ("no_tool_calls", "FAIL"),
        ("tool_not_called", "PASS")]


def test_thresholds_and_extra_calls():
    step = Step(expectations=[Expectation("tool_call", {"tool": "t", "args": {"a": 1, "b": 2}})])
    observation = seen(calls=[ObservedCall("t", {"a": 1, "b": 3}, "1"), ObservedCall("u", {}, "2")])
    assert outcomes(step, observation) == [("tool_call", "FAIL")]
    loose = Thresholds(tool_invocation_parameter_correctness_threshold=0.5)
    assert outcomes(step, observation, thresholds=loose) == [("tool_call", "PASS")]
    strict = Thresholds(tool_invocation_parameter_correctness_threshold=0.5, extra_tool_call_behavior="FAIL")
    assert outcomes(step, observation, thresholds=strict) == [("tool_call", "PASS"), ("tool_call", "FAIL")]


def test_the_offline_judge_is_deterministic_and_says_what_it_is():
    judge = TextSimilarityJudge()
    a = judge.similarity("Your bag allowance is one bag", "You may check one bag")
    assert a == judge.similarity("Your bag allowance is one bag", "You may check one bag")
    assert "not CES semantic similarity" in a.label and 0 < a.score < 1
    assert judge.similarity("Hello there", "hello   there!").passed
    assert not judge.similarity("Hello there", "Your refund was issued").passed
    assert judge.rubric("The agent is polite", "User: hi") is None


@pytest.mark.parametrize("data, path, operator, value, ok", [
    ({"status": "shipped"}, "$.result.status", "equals", "shipped", True),  # the emulator answers without "result"
    ({"result": {"items": [1, 2, 3]}}, "$.result.items", "length_greater_than", 2, True),
    ({"result": {"n": 3}}, "$.result.n", "less_than", 3, False),
    ({"result": {"x": None}}, "$.result.x", "is_null", None, True),
    ({"result": {"x": "abc"}}, "$.result.x", "contains", "b", True),
    ({"result": {}}, "$.result.missing", "is_not_null", None, False),
])
def test_tool_test_operators(data, path, operator, value, ok):
    assert check_operator(json_path(data, path), operator, value) is ok


def test_placeholders_fill_from_observed_values():
    assert fill("Seat {seat} on {flight.number} for {price} USD, {unknown}", {"seat": "2A", "flight": {"number": "SW1"}, "price": 340.0}) \
        == "Seat 2A on SW1 for 340 USD, {unknown}"


def test_the_gemini_judge_reads_gemini_answers():
    """No network here: a stand-in for google-genai's client answers as Gemini would (JSON text)."""
    from types import SimpleNamespace

    from ces_nb.evals import GeminiJudge

    asked = []

    class Models:
        def generate_content(self, model, contents, config):
            asked.append((model, contents, config))
            answer = '{"met": true, "explanation": "polite"}' if "EXPECTATION" in contents else '{"score": 3, "explanation": "close"}'
            return SimpleNamespace(text=answer)

    judge = GeminiJudge(client=SimpleNamespace(models=Models()))
    verdict = judge.similarity("You may check one bag", "One checked bag is included")
    assert verdict.passed and verdict.score == 0.75 and "Gemini" in verdict.label
    assert not judge.similarity("a", "b", threshold=4).passed
    assert judge.rubric("The agent is polite", "User: hi").passed
    assert asked[0][0] == "gemini-2.5-flash" and asked[0][2]["response_mime_type"] == "application/json"
