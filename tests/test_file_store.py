"""The default store, a SQLite file, under load: one writer, turns batched into commits, reads
that never wait for a writer, ADK's optimistic concurrency kept."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.adk.errors import StaleSessionError
from google.adk.events import Event, EventActions
from google.adk.sessions import DatabaseSessionService
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.genai import types

from conftest import APP, run, texts
from emulator_process import EmulatorProcess
from ces_nb.emulator.store import session_service_for

TALK = ["Hello", "What's the status of flight SW12?", "How many bags can I check?", "What is my loyalty tier?"]


@pytest.fixture(scope="module")
def file_emulator(tmp_path_factory):
    db = tmp_path_factory.mktemp("file-store") / "sessions.db"
    process = EmulatorProcess("--db", str(db))
    yield process, db
    process.stop()


def _clients(address):
    channel = grpc.insecure_channel(address)
    return (channel, ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
            ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel)))


def test_many_concurrent_sessions_all_complete_on_the_file_store(file_emulator):
    emulator, _db = file_emulator
    channel, sessions, agents = _clients(emulator.address)
    names = [f"{APP}/sessions/load-{n}" for n in range(40)]

    def converse(name):
        for n, text in enumerate(TALK):
            out = run(sessions, name, text)
            assert out[-1].turn_index == n + 1 and out[-1].turn_completed

    with ThreadPoolExecutor(max_workers=20) as pool:
        for future in [pool.submit(converse, name) for name in names]:
            future.result()  # any INTERNAL ("database is locked") fails here
    for name in names[:5]:
        conversation = agents.get_conversation(name=name.replace("/sessions/", "/conversations/"))
        assert len(conversation.turns) == len(TALK)
    channel.close()


def test_reads_go_on_while_another_writer_holds_the_file(file_emulator):
    emulator, db = file_emulator
    channel, sessions, agents = _clients(emulator.address)
    name = f"{APP}/sessions/held"
    run(sessions, name, "Hello")
    holder = sqlite3.connect(db, timeout=1, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by someone else
    try:
        conversation = agents.get_conversation(name=name.replace("/sessions/", "/conversations/"), timeout=5)
        assert len(conversation.turns) == 1
        done: list = []
        turn = threading.Thread(target=lambda: done.append(run(sessions, name, "What is my loyalty tier?")))
        turn.start()
        turn.join(0.5)
        assert not done  # the turn waits for the write lock (busy_timeout): not acknowledged, not lost
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    turn.join(30)
    assert done and done[0][-1].turn_index == 2
    assert len(agents.get_conversation(name=name.replace("/sessions/", "/conversations/")).turns) == 2
    channel.close()


def _event(text: str, n: int) -> Event:
    return Event(author="user", invocation_id=f"inv-{n}", content=types.Content(role="user", parts=[types.Part(text=text)]),
                 actions=EventActions(state_delta={"n": n}))


def test_a_stale_session_is_refused_and_the_other_writer_keeps_its_turn(tmp_path):
    """Two copies of one session (two workers, say): the first turn stored wins, the other gets
    ADK's StaleSessionError and stores nothing; ADK's own service reads back what was stored."""
    db = str(tmp_path / "s.db")

    async def go():
        store = session_service_for(db)
        created = await store.create_session(app_name="a", user_id="u", session_id="s")
        one = await store.get_session(app_name="a", user_id="u", session_id="s")
        two = await store.get_session(app_name="a", user_id="u", session_id="s")
        # A cached copy is current while the store's revision is its own (what --workers ask each turn).
        assert await store.revision(two) == two._storage_update_marker
        await store.append_events(one, [_event("first", 1), _event("again", 2)])
        assert await store.revision(two) != two._storage_update_marker
        with pytest.raises(StaleSessionError):
            await store.append_events(two, [_event("late", 3)])
        await store.append_events(one, [_event("more", 4)])  # the winner's revision moved on with it
        assert await store.revision(one) == one._storage_update_marker
        # The revision the loop reads through the driver is the one SQLAlchemy reads.
        writer = store._sqlite_writer()
        assert writer.revision(one) == writer._revision_through_sqlalchemy(one) == one._storage_update_marker
        assert not writer._reader.in_transaction  # no read left open to hold back the WAL's checkpoints
        gone = await store.create_session(app_name="a", user_id="u", session_id="gone")
        await store.delete_session(app_name="a", user_id="u", session_id="gone")
        assert await store.revision(gone) is None
        await store.close()
        adk = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{db}")
        stored = await adk.get_session(app_name="a", user_id="u", session_id="s")
        await adk.close()
        return created, stored

    created, stored = asyncio.run(go())
    assert [e.content.parts[0].text for e in stored.events] == ["first", "again", "more"]
    assert stored.state["n"] == 4
    assert [e.id for e in stored.events][:1] and created.id == "s"


def test_a_turn_that_changes_user_state_is_stored_whole_through_adks_own_path(tmp_path):
    """app: and user: state live in other rows than the session's: such a turn goes through ADK's
    append_event, its events in one transaction, and reads back as ADK wrote it."""
    db = str(tmp_path / "u.db")

    async def go():
        store = session_service_for(db)
        await store.create_session(app_name="a", user_id="u", session_id="s")
        session = await store.get_session(app_name="a", user_id="u", session_id="s")
        first = _event("hi", 1)
        shared = Event(author="user", invocation_id="inv-u", actions=EventActions(state_delta={"user:tier": "Gold"}))
        await store.append_events(session, [first, shared])
        await store.close()
        adk = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{db}")
        stored = await adk.get_session(app_name="a", user_id="u", session_id="s")
        other = await adk.create_session(app_name="a", user_id="u", session_id="t")
        await adk.close()
        return stored, other

    stored, other = asyncio.run(go())
    assert [e.invocation_id for e in stored.events] == ["inv-1", "inv-u"]
    assert stored.state["user:tier"] == "Gold" and other.state["user:tier"] == "Gold"


def test_a_turn_with_a_big_state_is_written_off_the_loop_and_read_back_whole(tmp_path, monkeypatch):
    """256 KiB of variables: the writer thread encodes and writes the turn, not the event loop
    (which would hold every other session's turn meanwhile); small turns stay on the loop."""
    from ces_nb.emulator import sqlite_writer

    db = str(tmp_path / "big.db")
    variables = {f"k{i}": "v" * 100 for i in range(2_300)}
    written_by: list[str] = []
    real_write_turn = sqlite_writer.SqliteWriter._write_turn

    def spy(self, connection, turn):
        written_by.append(threading.current_thread().name)
        return real_write_turn(self, connection, turn)

    monkeypatch.setattr(sqlite_writer.SqliteWriter, "_write_turn", spy)

    async def go():
        store = session_service_for(db)
        await store.create_session(app_name="a", user_id="u", session_id="s")
        session = await store.get_session(app_name="a", user_id="u", session_id="s")
        await store.append_events(session, [_event("small", 1)])
        big = Event(author="user", invocation_id="inv-big", actions=EventActions(state_delta=variables))
        await store.append_events(session, [big, _event("after", 2)])
        await store.append_events(session, [_event("state is big now", 3)])  # the whole state is rewritten each turn
        await store.close()
        adk = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{db}")
        stored = await adk.get_session(app_name="a", user_id="u", session_id="s")
        await adk.close()
        return stored

    stored = asyncio.run(go())
    loop_thread = threading.main_thread().name
    assert written_by == [loop_thread, "ces-nb store writer", "ces-nb store writer"]
    assert [e.invocation_id for e in stored.events] == ["inv-1", "inv-big", "inv-2", "inv-3"]
    assert all(stored.state[k] == v for k, v in variables.items()) and stored.state["n"] == 3


def test_json_chars_counts_state_and_contents_and_stops_at_its_limit():
    from ces_nb.emulator.sqlite_writer import json_chars

    text = Event(author="user", content=types.Content(role="user", parts=[types.Part(text="x" * 50_000)]))
    call = Event(author="agent", content=types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(
        name="t", args={"q": ["y" * 40_000]}))]))
    assert json_chars([{"a": "b"}], [], 10**6) < 100
    assert json_chars([], [text], 10**6) >= 50_000
    assert json_chars([], [call], 10**6) >= 40_000
    assert json_chars([{"nested": {"deep": ["z" * 70_000]}}], [], 10**6) >= 70_000
    # past the limit it stops counting: a huge state costs no more than the limit's worth
    assert json_chars([{f"k{i}": "v" * 100 for i in range(100_000)}], [], 1_000) < 20_000
