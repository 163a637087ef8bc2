"""The CES Python runtime in the emulator: python tools with `context` and `tools`,
callbacks at their documented points, guardrails, and errors that name the export's file
and line. Conversations run through the official gRPC client against a real emulator
serving tests/apps/ces_runtime (examples/ give the playback model its scripts)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.protobuf import json_format

from conftest import EmulatorProcess
from ces_nb.emulator.python_runner import PythonToolRunner

APP_DIR = Path(__file__).parent / "apps" / "ces_runtime"
APP = "projects/p/locations/us/apps/ces-runtime"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def emulator():
    process = EmulatorProcess("--app", str(APP_DIR), "--db", ":memory:")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(emulator):
    ch = grpc.insecure_channel(emulator.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def sessions(channel):
    return ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))


@pytest.fixture
def session(sessions, request):
    """A fresh session: say(text) runs one turn and returns a Turn."""
    name = f"{APP}/sessions/{request.node.name[:40]}-{next(_ids)}"
    return lambda text: Turn(sessions.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]}).outputs)


class Turn:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.diagnostic = self.outputs[-1].diagnostic_info
        self.root = self.diagnostic.root_span

    @property
    def text(self) -> str:
        return " ".join(o.text for o in self.outputs if o.text)

    def kinds(self) -> set[str]:
        return {ces_v1.SessionOutput.pb(o).WhichOneof("output_type") for o in self.outputs}

    def chunks(self, kind: str) -> list[dict]:
        found = []
        for message in self.diagnostic.messages:
            for chunk in message.chunks:
                pb = ces_v1.Chunk.pb(chunk)
                if pb.WhichOneof("data") == kind:
                    found.append(json_format.MessageToDict(getattr(pb, kind)))
        return found

    def variables(self) -> dict:
        """Every variable the turn updated, the last value winning."""
        out: dict = {}
        for delta in self.chunks("updated_variables"):
            out.update(delta)
        return out

    def tool_response(self, tool: str) -> dict:
        return next(c["response"] for c in self.chunks("tool_response") if c["tool"] == tool)

    def spans(self, name: str) -> list[dict]:
        found = []

        def walk(span, parent):
            if span.name == name:
                found.append({**json_format.MessageToDict(ces_v1.Span.pb(span).attributes), "_parent": parent})
            for child in span.child_spans:
                walk(child, span.name)

        walk(self.root, None)
        return found


def stages(turn: Turn) -> list[str]:
    return [s["stage"] for s in turn.spans("Callback")]


# --- tools: context, state, tools.<name>() ------------------------------------------------

def test_a_python_tool_reads_and_writes_state_and_calls_another_tool(session):
    first = session("Check account abc123")
    body = first.tool_response("lookup_account")
    # tools.loyalty_points() ran nested (600 = len("abc123") * 100), its state write was
    # visible to the caller at once, and `tier` (a declared variable) came in with the state.
    assert body["points"] == 600 and body["points_checked_seen"] is True and body["tier"] == "basic", body
    assert body["function_call_id"] == first.chunks("tool_call")[0]["id"]
    assert body["lookups"] == 1
    state = first.variables()
    assert state["last_account"] == "abc123" and state["points_checked"] is True and state["lookups"] == 1
    assert "600 points" in first.text
    # The state persists: the next turn's tool sees what this one wrote.
    second = session("Check account abc123")
    assert second.tool_response("lookup_account")["lookups"] == 2
    assert second.variables()["lookups"] == 2


def test_tool_callbacks_run_around_the_tool_and_after_tool_replaces_its_response(session):
    turn = session("Check account abc123")
    body = turn.tool_response("lookup_account")
    # after_tool_callback returned a new dict, and saw the state the tool had just written.
    assert body["stamped_by"] == "after_tool_callback" and body["seen_points"] is True, body
    tool_spans = {s["stage"]: s for s in turn.spans("Callback") if s["_parent"] == "Tool"}
    assert set(tool_spans) == {"before_tool_callback", "after_tool_callback"}
    assert tool_spans["after_tool_callback"]["returned"] == "dict"
    assert tool_spans["before_tool_callback"]["file"] == "agents/support/before_tool_callbacks/before_tool_callbacks_01/python_code.py"


def test_a_before_tool_callback_that_returns_a_dict_skips_the_tool(session):
    turn = session("Check the blocked account")
    assert turn.tool_response("lookup_account") == {"error": "account blocked by before_tool_callback"}
    assert "lookups" not in turn.variables()  # the tool never ran
    assert "after_tool_callback" in stages(turn)  # after_tool still sees the (callback's) response


# --- model and agent callbacks --------------------------------------------------------------

def test_before_model_callback_preempts_the_model(session):
    turn = session("What are your opening hours?")
    assert turn.text == "We are open 9 to 5, basic customer."
    assert turn.spans("LLM") == []  # the model never ran
    preempting = [s for s in turn.spans("Callback") if s["stage"] == "before_model_callback" and s.get("returned") == "LlmResponse"]
    assert len(preempting) == 1 and preempting[0]["agent"] == "Support"


def test_a_callback_can_call_a_tool_and_keeps_its_state_writes(session):
    turn = session("How many points do I have?")
    assert turn.text == "You have 200 points."
    assert turn.variables()["points_checked"] is True  # written by the tool the callback called


def test_a_disabled_callback_never_runs(session):
    for text in ("What are your opening hours?", "Compare with other airlines"):
        turn = session(text)
        assert "DISABLED" not in turn.text
        assert all(s.get("name") != "never runs" for s in turn.spans("Callback"))


def test_after_model_callback_replaces_the_models_output(session):
    turn = session("Check account abc123")
    assert turn.text == "Account abc123: your balance is 42 with 600 points. (reviewed)"
    assert turn.variables()["reviewed"] is True
    replaced = [s for s in turn.spans("Callback") if s["stage"] == "after_model_callback" and s.get("returned") == "LlmResponse"]
    assert len(replaced) == 1


def test_before_agent_callbacks_run_in_order_and_the_first_content_ends_the_turn(session):
    turn = session("Compare with other airlines")
    assert turn.text == "We fly to more cities."
    assert turn.variables()["order"] == "first,second" and turn.variables()["visits"] == 1
    assert stages(turn)[:2] == ["before_agent_callback", "before_agent_callback"]
    assert stages(turn)[-1] == "after_agent_callback"
    assert turn.variables()["last_agent"] == "Support"  # what after_agent_callback wrote
    pong = session("ping")
    assert pong.text == "pong from before_agent_callback"
    assert pong.spans("LLM") == []
    assert pong.variables()["visits"] == 2
    assert pong.variables()["order"] == "first"  # the second never ran
    assert [s["name"] for s in pong.spans("Callback")] == ["count visits"]


def test_a_callback_can_end_the_session(session):
    turn = session("goodbye")
    assert "Goodbye!" in turn.text
    assert "end_session" in turn.kinds()
    end = next(o for o in turn.outputs if o.end_session)
    assert json_format.MessageToDict(ces_v1.EndSession.pb(end.end_session).metadata)["reason"] == "the customer said goodbye"


# --- guardrails -------------------------------------------------------------------------------

def guardrail(turn: Turn, name: str) -> list[dict]:
    return [s for s in turn.spans("Guardrail") if s["name"] == name]


def test_a_code_guardrail_triggers_and_answers_its_canned_response(session):
    turn = session("I want a refund, my money back")
    assert turn.text == "I can't discuss refunds here."
    assert turn.spans("LLM") == []
    [span] = guardrail(turn, "refund_word")
    assert span["decision"] == "TRIGGER" and span["type"] == "codeCallback" and span["reason"] == "the user asked for a refund"
    assert span["action"] == "respondImmediately"
    ok = session("Compare with other airlines")
    assert [s["decision"] for s in guardrail(ok, "refund_word")] == ["OK"]


def test_a_keyword_guardrail_matches_whole_words_in_user_input_and_agent_responses(session):
    blocked = session("Compare with other airlines like AcmeAir")
    assert blocked.text == "Let's talk about our own flights."
    assert [s["decision"] for s in guardrail(blocked, "no_competitors")] == ["TRIGGER"]
    assert guardrail(blocked, "no_competitors")[0]["reason"] == "matched 'AcmeAir'"
    passes = session("Compare with other airlines like AcmeAirways")  # not the whole word
    assert passes.text == "We fly to more cities."
    leaked = session("Tell me the secret roadmap")  # the agent's text says internal-only
    assert leaked.text == "Let's talk about our own flights."
    assert [(s["stage"], s["decision"]) for s in guardrail(leaked, "no_competitors")] == [("user input", "OK"), ("agent response", "TRIGGER")]


def test_a_streamed_answer_waits_for_its_guardrail_check(sessions):
    def stream(text: str) -> list:
        request = ces_v1.RunSessionRequest(
            config=ces_v1.SessionConfig(session=f"{APP}/sessions/stream-{next(_ids)}", enable_text_streaming=True),
            inputs=[ces_v1.SessionInput(text=text)])
        return [o.text for r in sessions.stream_run_session(request=request) for o in r.outputs if o.text]

    assert stream("Tell me the secret roadmap") == ["Let's talk about our own flights."]  # nothing leaked first
    assert stream("Compare with other airlines") == ["We fly to more cities."]


def test_a_regex_guardrail_blocks_card_numbers_in_user_input(session):
    blocked = session("Pay with my card 4111 1111 1111 1111")
    assert blocked.text == "Please don't share card numbers."
    assert blocked.spans("LLM") == []
    assert guardrail(blocked, "card_numbers")[0]["decision"] == "TRIGGER"
    fine = session("Pay with my card")
    assert fine.text == "I have charged your card."


def test_llm_judged_guardrails_are_reported_as_not_evaluated(session, channel):
    turn = session("Compare with other airlines")
    [span] = guardrail(turn, "policy_judge")
    assert span["evaluated"] is False and span["decision"] == "NOT_EVALUATED" and span["type"] == "llmPolicy"
    agents = ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))
    app = agents.get_app(name=APP)
    assert any("policy_judge" in e and "not evaluated offline" in e for e in app.validation_errors)


# --- errors ---------------------------------------------------------------------------------------

def test_a_tool_that_raises_names_the_exports_file_and_line(session):
    turn = session("Make it explode")
    body = turn.tool_response("explode")
    assert body["error"] == "ValueError: boom: testing (tools/explode/python_function/python_code.py, line 7)", body
    assert 'File "tools/explode/python_function/python_code.py", line 3, in explode' in body["traceback"]
    assert 'File "tools/explode/python_function/python_code.py", line 7, in _fail' in body["traceback"]
    assert "python_worker" not in body["traceback"]
    assert turn.text == "Something went wrong."
    # Its after_tool_callback raises too: the turn goes on, the span says where it failed.
    [failed] = [s for s in turn.spans("Callback") if s["stage"] == "after_tool_callback"]
    where = "agents/support/after_tool_callbacks/after_tool_callbacks_01/python_code.py"
    assert failed["error"] == f"RuntimeError: after_tool_callback failed on purpose ({where}, line 3)"
    assert f'File "{where}", line 3, in after_tool_callback' in failed["traceback"]


def test_a_callback_that_raises_is_reported_with_its_file_and_line():
    code = "def before_model_callback(callback_context, llm_request):\n    x = callback_context.state['missing']\n"

    async def main():
        runner = PythonToolRunner()
        try:
            return await runner.call(code, "before_model_callback", {"llm_request": {"contents": []}}, 10,
                                     filename="agents/support/before_model_callbacks/0.py",
                                     context={"state": {"a": 1}}, callback="before_model_callback")
        finally:
            await runner.close()

    reply = asyncio.run(main())
    assert reply["error"] == "KeyError: 'missing' (agents/support/before_model_callbacks/0.py, line 2)"
    assert 'File "agents/support/before_model_callbacks/0.py", line 2, in before_model_callback' in reply["traceback"]
    assert "x = callback_context.state['missing']" in reply["traceback"]


def test_callback_code_gets_ces_runtime_objects_and_its_state_writes_come_back():
    code = (
        "def after_model_callback(callback_context, llm_response):\n"
        "    callback_context.state['seen'] = llm_response.content.parts[0].text_or_transcript()\n"
        "    del callback_context.state['gone']\n"
        "    return LlmResponse.from_parts([Part.from_text('new'), Part.from_end_session(reason='done')])\n"
    )

    async def main():
        runner = PythonToolRunner()
        try:
            return await runner.call(code, "after_model_callback",
                                     {"llm_response": {"content": {"role": "model", "parts": [{"text": "old"}]}}}, 10,
                                     context={"state": {"gone": 1}, "agent_name": "Support"}, callback="after_model_callback")
        finally:
            await runner.close()

    reply = asyncio.run(main())
    assert reply["state_delta"] == {"seen": "old", "gone": None}
    assert reply["result"] == {"__ces__": "LlmResponse", "value": {"content": {"role": "model", "parts": [
        {"text": "new"},
        {"function_call": {"name": "end_session", "args": {"reason": "done", "session_escalated": False}}},
    ]}}}


def test_tools_calls_share_the_callers_deadline():
    code = "def slow():\n    return tools.slow({})\n"

    async def main():
        runner = PythonToolRunner()

        async def forever(name, args, state):
            await asyncio.sleep(30)

        try:
            return await runner.call(code, "slow", {}, 1, on_tool_call=forever)
        finally:
            await runner.close()

    assert asyncio.run(main()) == {"error": "slow timed out after 1 s"}


def test_the_export_loads_callbacks_and_guardrails_in_the_reference_shapes():
    from ces_nb.emulator.export import load_export
    from ces_nb.emulator.guardrails import app_guardrails

    app = load_export(str(APP_DIR))
    support = app.agents["Support"]
    assert [c.disabled for c in support.before_model_callbacks] == [False, True]
    assert support.before_model_callbacks[0].python_code.startswith("def _user_text")  # the file, inlined
    assert len(support.before_agent_callbacks) == 2 and support.guardrails == ["refund_word"]
    guardrails = app_guardrails(app)
    assert set(guardrails) == {"refund_word", "no_competitors", "card_numbers", "policy_judge"}
    assert guardrails["refund_word"].code_callback.before_model_callback.python_code.startswith("def before_model_callback")
    assert list(app.app.guardrails) == ["no_competitors", "card_numbers", "policy_judge"]
