"""Constant-cost turns (history_window.py): the runner sees a window of a long session, and the
conversation goes exactly as it goes on the whole session."""

from __future__ import annotations

import asyncio

from google.adk.sessions import InMemorySessionService
from google.cloud import ces_v1
from google.protobuf import json_format

from conftest import APP, kind, run, texts
from ces_nb.emulator.export import load_export
from ces_nb.emulator.python_runner import PythonToolRunner
from ces_nb.emulator.runtime import AppRuntime
from ces_nb.emulator.server import demo_app_path

TALK = ["Hello", "What's the status of flight SW12?", "How many bags can I check?", "What is my loyalty tier?",
        "Can I bring my cat on the plane?", "Are there any travel advisories for Denver?"]


def _answer(call: ces_v1.ToolCall, response: dict) -> ces_v1.SessionInput:
    return ces_v1.SessionInput(tool_responses=ces_v1.ToolResponses(tool_responses=[
        ces_v1.ToolResponse(id=call.id, tool=call.tool, response=response)]))


def _outputs(outputs: list[ces_v1.SessionOutput]) -> list[dict]:
    """What the client sees of a turn, without timings."""
    seen = []
    for output in outputs:
        pb = ces_v1.SessionOutput.pb(output)
        data = json_format.MessageToDict(pb)
        data.pop("diagnosticInfo", None)
        seen.append(data)
    return seen


async def _converse(runtime: AppRuntime) -> list[list[dict]]:
    """A long conversation: small talk, a booking with two client tool calls answered a turn
    later (the seat's price flows into the payment's args), variables, more small talk."""
    config = ces_v1.SessionConfig(session=f"{APP}/sessions/long")
    turns = []

    async def turn(*inputs) -> list[ces_v1.SessionOutput]:
        items = [i if isinstance(i, ces_v1.SessionInput) else ces_v1.SessionInput(text=i) for i in inputs]
        out = await runtime.run_turn_to_end("long", config, items)
        turns.append(_outputs(out))
        return out

    def calls(out):
        return [c for o in out if kind(o) == "tool_calls" for c in o.tool_calls.tool_calls]

    for n in range(12):
        await turn(TALK[n % len(TALK)])
    await turn(ces_v1.SessionInput(variables={"customer_name": "Ada", "loyalty_tier": "Gold"}))
    out = await turn("I'd like to book a seat on flight SW77")
    (seat,) = calls(out)
    for n in range(3):  # the call waits while the user talks: it stays answerable
        await turn(TALK[n])
    await turn(_answer(seat, {"seat": "4A", "confirmed": True, "price": 210.0}))
    for n in range(4):
        await turn(TALK[n + 1])
    out = await turn("Yes, please charge my card")
    for call in calls(out):
        await turn(_answer(call, {"approved": True, "reference": "PNR4A"}))
    for n in range(8):
        await turn(TALK[n % len(TALK)])
    return turns


def test_a_windowed_session_says_what_the_whole_session_says():
    app = load_export(str(demo_app_path()))

    async def both():
        results = []
        for windowed in (True, False):
            runtime = AppRuntime(app, InMemorySessionService(), PythonToolRunner())
            runtime.windowed = windowed
            try:
                results.append(await _converse(runtime))
            finally:
                await runtime.python_runner.close()
        return results

    windowed, whole = asyncio.run(both())
    assert len(windowed) == len(whole) > 30
    for n, (a, b) in enumerate(zip(windowed, whole), start=1):
        assert a == b, f"turn {n} differs"
    # The seat's price, picked 8 turns before, is what the payment call asks for.
    payment = [o for turn in windowed for o in turn if "toolCalls" in o]
    assert payment and payment[-1]["toolCalls"]["toolCalls"][0]["args"] == {"amount": 210.0, "currency": "USD"}


def test_a_long_session_keeps_every_turn_in_the_store(sessions, agents, session_name):
    name = session_name()
    for n in range(40):
        out = run(sessions, name, TALK[n % len(TALK)])
        assert out[-1].turn_index == n + 1
    assert "welcome to SkyWay Air" in texts(run(sessions, name, "Hello"))
    conversation = agents.get_conversation(name=name.replace("/sessions/", "/conversations/"))
    assert len(conversation.turns) == 41
    assert [t.messages[0].chunks[0].text for t in conversation.turns][:3] == TALK[:3]


def test_adks_optional_a2a_import_is_tried_once_not_on_every_turn():
    """ADK imports remote_a2a_agent on every workflow node it builds; without the optional a2a
    package that failed, and searched the path, every time. Now the answer is in sys.modules."""
    import sys

    import ces_nb.emulator.runtime  # noqa: F401

    assert "google.adk.agents.remote_a2a_agent" in sys.modules
