"""model.py: one Turn from every source (protos, bidi, stored conversations, JSON in either spelling)."""

from __future__ import annotations

import base64

from google.cloud import ces_v1
from hypothesis import given, settings
from hypothesis import strategies as st

from ces_nb.convert.bidi import turn_from_bidi
from ces_nb.convert.conversation import turn_from_conversation_turn
from ces_nb.convert.session_output import turn_from_outputs
from ces_nb.model import Span, Transcript, Turn

from conftest import APP

SPAN = {
    "name": "root",
    "start_time": "2026-11-22T10:00:00.000000123Z",
    "end_time": "2026-11-22T10:00:00.250000123Z",
    "duration": "0.250s",
    "attributes": {"perceived latency (ms)": 120.5},
    "child_spans": [
        {"name": "LLM", "start_time": "2026-11-22T10:00:00.010Z", "end_time": "2026-11-22T10:00:00.110Z",
         "attributes": {"agent": "SkyWay Concierge", "model": "playback"}},
        {"name": "Tool", "start_time": "2026-11-22T10:00:00.120Z", "duration": "0.050s",
         "attributes": {"name": "get_flight_status", "args": {"flight_number": "SW12"}}},
    ],
}


def full_outputs() -> list[ces_v1.SessionOutput]:
    """One SessionOutput of every kind, as real protos."""
    return [
        ces_v1.SessionOutput(text="Hello **there**.", turn_index=3),
        ces_v1.SessionOutput(audio=b"\x01\x00\x02\x00", turn_index=3),
        ces_v1.SessionOutput(turn_index=3, tool_calls=ces_v1.ToolCalls(tool_calls=[
            ces_v1.ToolCall(id="c1", tool=f"{APP}/tools/select_seat", display_name="select_seat", args={"row": 12, "prefs": ["aisle"]})])),
        ces_v1.SessionOutput(turn_index=3, citations=ces_v1.Citations(cited_chunks=[
            ces_v1.Citations.CitedChunk(title="Baggage", uri="https://x.example/b", text="One bag.", requires_attribution=True)])),
        ces_v1.SessionOutput(turn_index=3, google_search_suggestions=ces_v1.GoogleSearchSuggestions(
            htmls=["<div>chip</div>"], web_search_queries=[ces_v1.WebSearchQuery(query="denver snow", uri="https://g.example/?q=denver")])),
        ces_v1.SessionOutput(turn_index=3, payload={"boarding_pass": {"seat": "12C", "gate": "A4"}}),
        ces_v1.SessionOutput(turn_index=3, end_session=ces_v1.EndSession(metadata={"reason": "done"}), turn_completed=True,
                             diagnostic_info=ces_v1.SessionOutput.DiagnosticInfo(
                                 messages=[ces_v1.Message(role="user", chunks=[ces_v1.Chunk(text="hi")]),
                                           ces_v1.Message(role="agent", chunks=[ces_v1.Chunk(agent_transfer=ces_v1.AgentTransfer(
                                               target_agent=f"{APP}/agents/booking-agent", display_name="Booking Agent"))])],
                                 root_span=ces_v1.Span.wrap(_span_pb()))),
    ]


def _span_pb():
    from google.protobuf import json_format

    return json_format.ParseDict(SPAN, ces_v1.Span.pb()())


def test_every_output_kind_from_protos():
    inputs = [ces_v1.SessionInput(text="hi"), ces_v1.SessionInput(dtmf="12#"), ces_v1.SessionInput(event=ces_v1.Event(event="welcome")),
              ces_v1.SessionInput(variables={"customer_name": "Ada"}), ces_v1.SessionInput(image=ces_v1.Image(mime_type="image/png", data=b"\x89PNG"))]
    turn = turn_from_outputs(full_outputs(), inputs)
    assert turn.index == 3 and turn.completed and not turn.partial
    assert [i.kind for i in turn.inputs] == ["text", "dtmf", "event", "variables", "image"]
    assert turn.inputs[2].value == "welcome" and turn.inputs[3].value == {"customer_name": "Ada"}
    assert turn.inputs[4].value == ("image/png", b"\x89PNG")
    assert turn.text == "Hello **there**."
    assert turn.audio == b"\x01\x00\x02\x00"
    (call,) = turn.tool_calls
    assert (call.id, call.name, call.args) == ("c1", "select_seat", {"row": 12, "prefs": ["aisle"]})
    assert turn.citations[0].requires_attribution and turn.citations[0].title == "Baggage"
    assert turn.of_kind("google_search_suggestions")[0].queries == [{"query": "denver snow", "uri": "https://g.example/?q=denver"}]
    assert turn.payloads == [{"boarding_pass": {"seat": "12C", "gate": "A4"}}]
    assert turn.end_session == {"reason": "done"}
    assert turn.transfers == [{"target_agent": f"{APP}/agents/booking-agent", "display_name": "Booking Agent"}]
    assert turn.perceived_latency_ms == 120.5
    root = turn.root_span
    assert root.start_ns % 1_000_000_000 == 123  # nanoseconds survive
    assert root.duration_ms == 250.0
    assert [s.kind for _, s in root.walk()] == ["root", "LLM", "Tool"]
    assert root.children[0].duration_ms == 100.0  # from start/end when duration is absent


def test_bidi_messages_fold_into_a_turn():
    messages = [
        ces_v1.BidiSessionServerMessage(recognition_result=ces_v1.RecognitionResult(transcript="book a")),
        ces_v1.BidiSessionServerMessage(session_output=ces_v1.SessionOutput(text="Sure.", turn_index=1)),
        ces_v1.BidiSessionServerMessage(interruption_signal=ces_v1.InterruptionSignal(barge_in=True)),
        ces_v1.BidiSessionServerMessage(session_output=ces_v1.SessionOutput(turn_index=1, turn_completed=True)),
    ]
    turn = turn_from_bidi(messages)
    assert turn.text == "Sure." and turn.completed and turn.index == 1
    assert turn.events == [{"recognition_result": {"transcript": "book a"}},
                           {"interruption_signal": {"barge_in": True}, "after_audio_ms": 0.0}]  # no agent audio yet
    assert turn.interrupted and turn.interrupted_at_ms == 0.0 and turn.heard == "book a"


def test_conversation_turn_becomes_inputs_and_outputs():
    conversation_turn = ces_v1.Conversation.Turn(
        messages=[ces_v1.Message(role="user", chunks=[ces_v1.Chunk(text="Seat please")]),
                  ces_v1.Message(role="agent", chunks=[ces_v1.Chunk(text="Which row?"), ces_v1.Chunk(payload={"k": 1})])],
        root_span=ces_v1.Span.wrap(_span_pb()),
    )
    turn = turn_from_conversation_turn(conversation_turn, index=2)
    assert turn.index == 2 and turn.user_text == "Seat please" and turn.text == "Which row?"
    assert turn.payloads == [{"k": 1}] and turn.root_span.name == "root"


def test_camel_case_json_from_the_wild_loads_like_snake_case():
    camel = {"outputs": [
        {"text": "Hi", "turnIndex": 1},
        {"toolCalls": {"toolCalls": [{"id": "c1", "displayName": "select_seat", "tool": "t", "args": {"seatClass": "ECONOMY"}}]},
         "turnIndex": 1, "turnCompleted": True,
         "diagnosticInfo": {"rootSpan": {"name": "root", "startTime": "2026-11-22T10:00:00Z", "duration": "1.5s",
                                         "childSpans": [{"name": "LLM", "duration": "0.5s"}]}}},
    ]}
    snake = {"outputs": [
        {"text": "Hi", "turn_index": 1},
        {"tool_calls": {"tool_calls": [{"id": "c1", "display_name": "select_seat", "tool": "t", "args": {"seatClass": "ECONOMY"}}]},
         "turn_index": 1, "turn_completed": True,
         "diagnostic_info": {"root_span": {"name": "root", "start_time": "2026-11-22T10:00:00Z", "duration": "1.5s",
                                           "child_spans": [{"name": "LLM", "duration": "0.5s"}]}}},
    ]}
    a, b = Turn.from_dict(camel), Turn.from_dict(snake)
    assert a == b
    assert a.tool_calls[0].args == {"seatClass": "ECONOMY"}  # user data keeps its own spelling
    assert a.root_span.children[0].duration_ms == 500.0


def test_conversation_json_loads_as_transcript():
    conversation = {"name": f"{APP}/conversations/abc", "startTime": "2026-11-22T10:00:00Z",
                    "turns": [{"messages": [{"role": "user", "chunks": [{"text": "Hello"}]},
                                            {"role": "agent", "chunks": [{"text": "Hi there"}]}]}]}
    transcript = Transcript.from_dict(conversation)
    assert transcript.session.endswith("/conversations/abc") and transcript.app == APP
    assert transcript[0].user_text == "Hello" and transcript[0].text == "Hi there" and transcript[0].index == 1


def test_transcript_round_trip_is_lossless(tmp_path):
    turn = turn_from_outputs(full_outputs(), [ces_v1.SessionInput(text="hi"), ces_v1.SessionInput(blob=ces_v1.Blob(mime_type="application/pdf", data=bytes(range(256))))])
    turn.events = [{"go_away": {}}]
    partial = turn_from_outputs([ces_v1.SessionOutput(text="Let me", turn_index=4)])
    partial.partial, partial.error = True, "CES is unreachable"
    transcript = Transcript([turn, partial], session=f"{APP}/sessions/s1", app=APP, metadata={"note": "x"})
    path = transcript.save(tmp_path / "t.json")
    loaded = Transcript.load(path)
    assert loaded == transcript
    assert loaded[0].inputs[1].value == ("application/pdf", bytes(range(256)))
    assert loaded[0].audio == b"\x01\x00\x02\x00"
    assert base64.b64encode(b"\x01\x00\x02\x00").decode() in path.read_text()


def test_newer_transcript_version_is_refused_with_advice(tmp_path):
    import json

    import pytest

    path = tmp_path / "future.json"
    path.write_text(json.dumps({"format": "ces_nb.transcript", "version": 99, "turns": []}))
    with pytest.raises(ValueError, match="upgrade ces_nb"):
        Transcript.load(path)


def test_deep_span_tree_does_not_recurse():
    raw: dict = {"name": "root", "duration": "1s"}
    node = raw
    for i in range(5000):
        child = {"name": f"s{i}", "duration": "0.001s"}
        node["child_spans"] = [child]
        node = child
    span = Span.from_dict(raw)
    assert sum(1 for _ in span.walk()) == 5001


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(args=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5), text=st.text(max_size=50))
def test_any_args_and_text_survive_save_and_load(tmp_path_factory, args, text):
    turn = Turn.from_dict({"outputs": [{"text": text, "turn_index": 1},
                                       {"tool_calls": {"tool_calls": [{"id": "c", "tool": "t", "args": args}]}, "turn_index": 1}]})
    path = tmp_path_factory.mktemp("rt") / "t.json"
    assert Transcript.load(Transcript([turn]).save(path)) == Transcript([turn])


def test_proto_fast_path_matches_the_json_path():
    from google.protobuf import json_format

    protos = full_outputs()
    dicts = [json_format.MessageToDict(ces_v1.SessionOutput.pb(o)) for o in protos]  # camelCase, as on the wire in JSON
    assert turn_from_outputs(protos) == turn_from_outputs(dicts)
