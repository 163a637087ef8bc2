"""Conversations through AgentService, fork, replay and diff, against the live emulator."""

from __future__ import annotations

import grpc
import pytest

import ces_nb
from ces_nb.errors import CesError
from ces_nb.explore.conversations import fetch_all, parse_since

from conftest import APP, EmulatorProcess


@pytest.fixture(scope="module")
def store():
    """A fresh emulator so the listing holds exactly what this module made."""
    server = EmulatorProcess("--db", ":memory:")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(store):
    c = ces_nb.connect(APP, endpoint=store.address)
    yield c
    c.close()


def test_conversations_page_through_and_filter(client):
    made = []
    for i in range(7):
        session = client.session()
        session.send("Hello")
        if i % 2:
            session.send("What's the status of flight SW12?")
        made.append(session)
    frame = client.conversations(since="1h")
    assert set(frame.name) >= {s.name.replace("/sessions/", "/conversations/") for s in made}
    assert list(frame.columns) == ["name", "start", "end", "turns", "input_types", "entry_agent", "source", "channel"]
    assert sorted(frame.turns.tolist())[-1] == 2 and set(frame.source) == {"LIVE"} and frame.entry_agent.iloc[0] == "skyway-concierge"
    assert list(frame.start) == sorted(frame.start, reverse=True)  # newest first
    from ces_nb.explore.conversations import list_conversations

    paged = list_conversations(client, APP, page_size=2)  # four pages through ListConversations
    assert list(paged.name) == list(client.conversations().name)
    assert client.conversations(since="2030-01-01").empty
    assert client.conversations(source="SIMULATOR").empty
    with pytest.raises(ValueError, match="'7d'"):
        client.conversations(since="last tuesday")
    with pytest.raises(ValueError, match="LIVE"):
        client.conversations(source="nowhere")


def test_conversation_renders_like_a_live_turn(client):
    session = client.session()
    live = session.send("What's the status of flight SW12?")
    stored = client.conversation(session.id)
    (turn,) = stored.turns
    assert turn.text == live.text and turn.user_text == live.user_text and turn.root_span == live.root_span
    assert turn.tool_calls == []  # get_flight_status ran on the server: not a client call
    assert "Flight SW12" in stored._repr_mimebundle_()["text/html"]


def test_details_fetch_in_parallel_and_report_errors_per_row(client):
    for _ in range(3):  # conversations of its own: it may run alone (-k), or first
        client.session().send("Hello")
    names = list(client.conversations().name)[:3] + [f"{APP}/conversations/does-not-exist"]
    transcripts, errors = fetch_all(client, names, max_workers=2, progress=False)
    assert all(t is not None for t in transcripts[:3]) and transcripts[3] is None
    assert errors[:3] == [None, None, None] and "not found" in errors[3]
    frame = client.conversations(details=True, progress=False)
    assert frame.error.isna().all() and all(t.turns for t in frame.transcript)


def test_unknown_app_conversations_is_a_clear_error(client):
    with pytest.raises(CesError) as info:
        client.conversations("nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_parse_since():
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 11, 22, tzinfo=timezone.utc)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_since(None) is None


def test_fork_reproduces_the_history(client):
    session = client.session()
    session.send("Hello", variables={"customer_name": "Ada"})
    session.send("What's the status of flight SW12?")
    session.send("How many bags can I check?")
    fork = session.fork(at_turn=2)
    contexts = fork.session_config().historical_contexts
    roles = [m.role for m in contexts]
    assert roles.count("user") == 2 and "SW12" in " ".join(c.text for m in contexts for c in m.chunks)
    turn = fork.send("What is my loyalty tier?")
    assert turn.index == 1 and "Ada" in turn.text  # the variable came through the history
    stored = client.conversation(fork.id)
    assert len(stored.turns) == 1
    with pytest.raises(ValueError, match="no turn 9"):
        session.fork(9)


def test_replay_resends_inputs_and_answers_tool_calls_from_the_recording(client):
    original = client.session()
    original.send("Hello")
    original.send("I'd like to book a seat on flight SW123")
    (call_id,) = original.pending
    original.respond({call_id: {"seat": "9C", "confirmed": True, "price": 77.0}})
    replayed = client.session().replay(original.transcript)
    assert [t.user_text for t in replayed.turns][:2] == ["Hello", "I'd like to book a seat on flight SW123"]
    assert "9C" in replayed.turns[-1].text
    assert not original.transcript.diff(replayed, tolerance=10, min_ms=1e9)  # same words, calls and args


def test_diff_finds_injected_differences(client):
    a = client.session()
    for text in ["Hello", "What's the status of flight SW12?"]:
        a.send(text)
    b = client.session()
    for text in ["Hello", "What's the status of flight SW34?"]:
        b.send(text)
    diff = a.transcript.diff(b.transcript, tolerance=10, min_ms=1e9)
    fields = set(zip(diff.frame.turn, diff.frame.field))
    assert fields == {(2, "user"), (2, "text")}
    assert "SW34" in diff._repr_mimebundle_()["text/html"] and "difference(s)" in repr(diff)
    from ces_nb.model import Transcript

    c = Transcript.from_dict(a.transcript.to_dict())
    c.turns[1].root_span.duration_ns *= 4
    slow = a.transcript.diff(c, tolerance=0.5, min_ms=5)
    assert [d.field for d in slow.differences] == ["turn ms"]
