"""SessionService through the official sync client, over a real socket."""

from __future__ import annotations

import collections.abc

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
from google.protobuf import json_format

from conftest import APP, kind, run, texts


def span_names(span: ces_v1.Span) -> list[str]:
    return [span.name] + [n for c in span.child_spans for n in span_names(c)]


def test_text_turn_has_index_completion_and_diagnostics(sessions, session_name):
    name = session_name()
    first = run(sessions, name, "Hello")
    assert "welcome to SkyWay Air" in texts(first)
    assert all(o.turn_index == 1 for o in first)
    assert first[-1].turn_completed and not any(o.turn_completed for o in first[:-1])
    info = first[-1].diagnostic_info
    assert [m.role for m in info.messages][:2] == ["user", "agent"]
    assert info.root_span.name == "root"
    assert "perceived latency (ms)" in info.root_span.attributes
    assert "LLM" in span_names(info.root_span)
    second = run(sessions, name, "What is my loyalty tier?")
    assert {o.turn_index for o in second} == {2}


def test_the_stored_turn_is_the_diagnostic_the_client_got(sessions, agents, session_name):
    """GetConversation's turn holds the same messages and root span as RunSession's diagnostic_info,
    for a turn of variables, text and a tool call (the record is written from the diagnostic's bytes)."""
    name = session_name()
    out = run(sessions, name, ces_v1.SessionInput(variables={"customer_name": "Grace", "tier": {"level": 2, "tags": ["a"]}}),
              "What's the status of flight SK123?")
    info = out[-1].diagnostic_info
    assert [m.role for m in info.messages][0] == "user" and len(info.messages) >= 2
    conversation = agents.get_conversation(name=name.replace("/sessions/", "/conversations/"))
    stored = conversation.turns[-1]
    assert list(stored.messages) == list(info.messages)
    assert stored.root_span == info.root_span and span_names(stored.root_span) == span_names(info.root_span)


def test_variables_fill_the_agent_text(sessions, session_name):
    out = run(sessions, session_name(), ces_v1.SessionInput(variables={"customer_name": "Grace", "loyalty_tier": "Gold"}),
              "What is my loyalty tier?")
    assert "Gold member, Grace" in texts(out)


def test_python_tool_runs_with_the_users_value_and_spans_are_real(sessions, session_name):
    out = run(sessions, session_name(), "What's the status of flight SW42?")
    assert "Flight SW42 is" in texts(out)
    root = out[-1].diagnostic_info.root_span
    tools = [c for c in root.child_spans if c.name == "Tool"]
    assert tools and tools[0].attributes["name"] == "get_flight_status"
    # args and response are structured values, as clients index them (cxas-scrapi's turn evals)
    assert tools[0].attributes["args"]["flight_number"].upper() == "SW42"
    assert isinstance(tools[0].attributes["response"], collections.abc.Mapping), tools[0].attributes["response"]
    assert tools[0].attributes["tool call id"]
    llm = next(c for c in root.child_spans if c.name == "LLM")
    for key in ("agent", "model", "input token count", "output token count", "time to first chunk (ms)"):
        assert key in llm.attributes
    # Children lie within the root, with real (non-zero) durations.
    assert abs((root.end_time - root.start_time) - root.duration).total_seconds() < 2e-6
    for child in root.child_spans:
        assert child.duration.total_seconds() > 0
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time


def test_data_store_answer_carries_citations(sessions, session_name):
    out = run(sessions, session_name(), "How many bags can I check?")
    kinds = [kind(o) for o in out]
    assert kinds.index("text") < kinds.index("citations")
    cited = next(o for o in out if kind(o) == "citations").citations.cited_chunks
    assert cited[0].uri == "https://help.skyway.example/baggage"
    assert cited[0].title in texts(out)


def test_search_tool_gives_search_suggestions(sessions, session_name):
    out = run(sessions, session_name(), "Any travel advisories for Denver?")
    suggestions = next(o for o in out if kind(o) == "google_search_suggestions").google_search_suggestions
    assert "Denver" in suggestions.web_search_queries[0].query
    assert "<a class=\"chip\"" in suggestions.htmls[0]
    assert "winter storm" in texts(out)


def test_payload_and_end_session(sessions, session_name):
    name = session_name()
    out = run(sessions, name, "Can you send me my boarding pass?")
    payload = next(o for o in out if kind(o) == "payload").payload
    assert json_format.MessageToDict(ces_v1.SessionOutput.pb(out[[kind(o) for o in out].index("payload")]).payload)["type"] == "boarding_pass"
    assert (payload["flight"], payload["seat"]) == ("SW77", "4A")  # nothing booked yet: the session's variables
    bye = run(sessions, name, "That's all, thanks. Goodbye!")
    end = next(o for o in bye if kind(o) == "end_session").end_session
    assert end.metadata["reason"] == "customer said goodbye"
    escalated = run(sessions, session_name(), "I want to talk to a real person")
    meta = next(o for o in escalated if kind(o) == "end_session").end_session.metadata
    assert meta["session_escalated"] is True


def test_client_tool_round_trip_uses_the_value_sent(sessions, session_name):
    name = session_name()
    out = run(sessions, name, "I'd like to book a seat on flight SW123")
    transfer = [c for m in out[-1].diagnostic_info.messages for c in m.chunks if "agent_transfer" in c]
    assert transfer and transfer[0].agent_transfer.target_agent == "Booking Agent"
    calls = next(o for o in out if kind(o) == "tool_calls").tool_calls.tool_calls
    assert calls[0].tool == "select_seat" and calls[0].id
    assert calls[0].args["flight"]["number"] == "SW123"
    reply = run(sessions, name, ces_v1.SessionInput(tool_responses=ces_v1.ToolResponses(tool_responses=[
        ces_v1.ToolResponse(id=calls[0].id, tool="select_seat", response={"seat": "7F", "confirmed": True, "price": 88.25})])))
    assert "seat 7F for 88.25 USD" in texts(reply)
    assert reply[0].turn_index == 2


def _answer(sessions, name, call, response):
    return run(sessions, name, ces_v1.SessionInput(tool_responses=ces_v1.ToolResponses(tool_responses=[
        ces_v1.ToolResponse(id=call.id, tool=call.tool, response=response)])))


def test_what_the_user_picks_flows_into_later_args_and_payloads(sessions, session_name):
    """Seat 4A at 210 on SW77 is what gets charged and what the boarding pass says."""
    name = session_name()
    out = run(sessions, name, "I'd like to book a seat on flight SW77")
    (seat_call,) = next(o for o in out if kind(o) == "tool_calls").tool_calls.tool_calls
    assert "seat 4A for 210 USD" in texts(_answer(sessions, name, seat_call, {"seat": "4A", "confirmed": True, "price": 210.0}))
    out = run(sessions, name, "Yes, please charge my card")
    (pay_call,) = next(o for o in out if kind(o) == "tool_calls").tool_calls.tool_calls
    assert pay_call.tool.endswith("confirm_payment") and dict(pay_call.args) == {"amount": 210.0, "currency": "USD"}
    done = _answer(sessions, name, pay_call, {"approved": True, "reference": "PNR4A"})
    payload = json_format.MessageToDict(ces_v1.SessionOutput.pb(next(o for o in done if kind(o) == "payload")).payload)
    assert "reference is PNR4A" in texts(done)
    assert payload == {"type": "boarding_pass", "flight": "SW77", "seat": "4A", "gate": "A4", "boarding": "18:41"}


def test_a_boarding_pass_asked_for_later_says_what_was_picked(sessions, session_name):
    name = session_name()
    out = run(sessions, name, "I'd like to book a seat on flight SW55")
    (seat_call,) = next(o for o in out if kind(o) == "tool_calls").tool_calls.tool_calls
    _answer(sessions, name, seat_call, {"seat": "12B", "confirmed": True, "price": 99.0})
    later = run(sessions, name, "Can you send me my boarding pass?")
    payload = json_format.MessageToDict(ces_v1.SessionOutput.pb(next(o for o in later if kind(o) == "payload")).payload)
    assert (payload["flight"], payload["seat"]) == ("SW55", "12B")


def test_unknown_tool_response_id_names_the_pending_ids(sessions, session_name):
    name = session_name()
    out = run(sessions, name, "I'd like to book a seat on flight SW123")
    pending = next(o for o in out if kind(o) == "tool_calls").tool_calls.tool_calls[0].id
    with pytest.raises(exceptions.InvalidArgument) as err:
        run(sessions, name, ces_v1.SessionInput(tool_responses=ces_v1.ToolResponses(tool_responses=[
            ces_v1.ToolResponse(id="nope", tool="select_seat", response={"seat": "1A"})])))
    assert "nope" in err.value.message and pending in err.value.message


def test_every_input_kind_is_accepted(sessions, session_name):
    name = session_name()
    for item in (
        ces_v1.SessionInput(dtmf="12#"),
        ces_v1.SessionInput(event=ces_v1.Event(event="welcome")),
        ces_v1.SessionInput(image=ces_v1.Image(mime_type="image/png", data=b"\x89PNG\r\n")),
        ces_v1.SessionInput(blob=ces_v1.Blob(mime_type="application/pdf", data=b"%PDF-1.4")),
    ):
        out = run(sessions, name, item)
        assert out[-1].turn_completed
        user = out[-1].diagnostic_info.messages[0]
        assert user.role == "user" and user.chunks
    only_vars = run(sessions, name, ces_v1.SessionInput(variables={"loyalty_tier": "Silver"}))
    assert only_vars[-1].turn_completed and kind(only_vars[-1]) is None
    assert "Silver member" in texts(run(sessions, name, "What is my loyalty tier?"))


def test_will_continue_buffers_fragments(sessions, session_name):
    name = session_name()
    held = run(sessions, name, ces_v1.SessionInput(text="What's the status", will_continue=True))
    assert held == []
    out = run(sessions, name, ces_v1.SessionInput(text="of flight SW9?"))
    assert "Flight SW9 is" in texts(out)
    assert out[-1].diagnostic_info.messages[0].chunks[0].text == "What's the status of flight SW9?"


def test_stream_run_session_streams_text_in_chunks(sessions, session_name):
    request = ces_v1.RunSessionRequest(
        config=ces_v1.SessionConfig(session=session_name(), enable_text_streaming=True),
        inputs=[ces_v1.SessionInput(text="Hello")],
    )
    outputs = [o for r in sessions.stream_run_session(request=request) for o in r.outputs]
    text_chunks = [o.text for o in outputs if kind(o) == "text"]
    assert len(text_chunks) > 1
    assert "welcome to SkyWay Air" in "".join(text_chunks)
    assert outputs[-1].turn_completed


def test_stream_without_text_streaming_sends_whole_outputs(sessions, session_name):
    request = ces_v1.RunSessionRequest(
        config=ces_v1.SessionConfig(session=session_name()), inputs=[ces_v1.SessionInput(text="How many bags can I check?")])
    outputs = [o for r in sessions.stream_run_session(request=request) for o in r.outputs]
    assert [kind(o) for o in outputs] == ["text", "citations"]


def test_unmatched_input_gets_a_fallback_not_an_error(sessions, session_name):
    out = run(sessions, session_name(), "qwxz vlorp")
    assert "didn't catch that" in texts(out)


@pytest.mark.parametrize("session,code,words", [
    ("sessions/abc", grpc.StatusCode.INVALID_ARGUMENT, "must look like"),
    (f"{APP}/sessions/bad id!", grpc.StatusCode.INVALID_ARGUMENT, "letters, digits"),
    ("projects/p/locations/us/apps/nope/sessions/s1", grpc.StatusCode.NOT_FOUND, "loaded apps: skyway"),
])
def test_bad_session_names(sessions, session, code, words):
    with pytest.raises(exceptions.GoogleAPICallError) as err:
        run(sessions, session, "Hello")
    assert err.value.grpc_status_code == code
    assert words in err.value.message


def test_empty_and_oversized_inputs(sessions, session_name):
    with pytest.raises(exceptions.InvalidArgument, match="no inputs"):
        sessions.run_session(request=ces_v1.RunSessionRequest(config=ces_v1.SessionConfig(session=session_name())))
    with pytest.raises(exceptions.InvalidArgument, match="is empty"):
        run(sessions, session_name(), ces_v1.SessionInput())
    big = ces_v1.SessionInput(blob=ces_v1.Blob(mime_type="application/octet-stream", data=b"\0" * (10 * 1024 * 1024)))
    with pytest.raises(exceptions.InvalidArgument, match="at most 8 MiB"):
        run(sessions, session_name(), big)
    # ...and the emulator keeps serving.
    assert "welcome" in texts(run(sessions, session_name(), "Hello"))


def test_unknown_entry_agent_is_named(sessions, session_name):
    with pytest.raises(exceptions.InvalidArgument, match="Booking Agent"):
        run(sessions, session_name(), "Hello", entry_agent="Nobody")


def test_entry_agent_starts_the_session_there(sessions, session_name):
    out = run(sessions, session_name(), "blah blah", entry_agent=f"{APP}/agents/Booking Agent")
    llm = next(c for c in out[-1].diagnostic_info.root_span.child_spans if c.name == "LLM")
    assert llm.attributes["agent"] == "Booking Agent"
