"""A turn reaches the store whole or not at all: one cut short by kill -9 leaves nothing behind,
so its tool answer is still awaited after a restart, and the client numbers the re-run as the
server does."""

from __future__ import annotations

import asyncio

from google.adk.events import Event, EventActions
from google.adk.sessions import InMemorySessionService

import ces_nb
from ces_nb.emulator.turn_store import TurnStore
from conftest import APP
from emulator_process import EmulatorProcess, free_port

BOOK = "I'd like to book a seat on flight SW123"
SEAT = {"seat": "2A", "confirmed": True, "price": 340.0}


def test_a_tool_answer_whose_turn_was_killed_is_still_awaited_after_a_restart(tmp_path):
    db, port = str(tmp_path / "store.db"), free_port()
    # The failpoint holds each commit for 2 s, so the kill lands after the turn began streaming
    # and before it is stored (a playback turn is otherwise stored within milliseconds).
    server = EmulatorProcess("--db", db, port=port, env={"CES_NB_FAILPOINT_COMMIT_DELAY_S": "2"})
    client = ces_nb.connect(APP, endpoint=server.address)
    try:
        session = client.session(enable_text_streaming=True)  # outputs leave as they happen, mid-turn
        session.auto_answer = False
        assert session.send(BOOK).tool_calls and session.pending
        call_id = next(iter(session.pending))

        def crash(_output) -> None:
            if server.proc.poll() is None:
                server.kill()  # kill -9 as the answer's turn starts streaming

        cut = session.respond({call_id: SEAT}, stream=True, on_output=crash)
        assert cut.partial and not cut.completed
        assert call_id in session.pending  # the cut answer doesn't count

        server = EmulatorProcess("--db", db, port=port)  # same store, same address
        done = session.respond({call_id: SEAT})
        assert done.completed and not session.pending
        assert done.index == 2 and [t.index for t in session.turns] == [1, 2]
        assert session.interrupted == [cut] and "cut short" in done.notes[0]
        stored = client.conversation(session.name.replace("/sessions/", "/conversations/"))
        assert [t.index for t in stored.turns] == [1, 2]
    finally:
        client.close()
        server.stop()


def test_an_aborted_turn_leaves_the_store_as_it_was():
    async def main():
        store = InMemorySessionService()
        turns = TurnStore(store)
        session = await turns.create_session(app_name="a", user_id="u", session_id="s", state={"n": 0})
        turns.begin(session)
        await turns.append_event(session, Event(author="user", invocation_id="i1", actions=EventActions(state_delta={"n": 1})))
        assert (await turns.get_session(app_name="a", user_id="u", session_id="s")) is session  # the live one, mid-turn
        turns.abort("s")
        stored = await store.get_session(app_name="a", user_id="u", session_id="s")
        assert stored.events == [] and stored.state["n"] == 0

        live = await turns.get_session(app_name="a", user_id="u", session_id="s")
        turns.begin(live)
        for n in (1, 2):
            await turns.append_event(live, Event(author="user", invocation_id=f"i{n}", actions=EventActions(state_delta={"n": n})))
        assert (await store.get_session(app_name="a", user_id="u", session_id="s")).events == []  # nothing before commit
        await turns.commit("s")
        stored = await store.get_session(app_name="a", user_id="u", session_id="s")
        assert [e.invocation_id for e in stored.events] == ["i1", "i2"] and stored.state["n"] == 2
        assert [e.invocation_id for e in live.events] == ["i1", "i2"]  # the live session is whole, no event twice

    asyncio.run(main())
