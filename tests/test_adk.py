"""ces_nb.adk: ADK sessions, events, artifacts, memory and spans in ces_nb's views."""

from __future__ import annotations

import asyncio

import pytest
from google.adk.agents import LlmAgent
from google.adk.artifacts import InMemoryArtifactService
from google.adk.events import Event, EventActions
from google.adk.memory import InMemoryMemoryService
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import DatabaseSessionService, InMemorySessionService
from google.adk.tools import ToolContext
from google.genai import types

from ces_nb import adk, frames


def text(role, value):
    return types.Content(role=role, parts=[types.Part(text=value)])


def every_kind_session():
    """One invocation holding every kind of event ADK writes."""
    events = [
        Event(invocation_id="i1", author="user", content=text("user", "book me a seat")),
        Event(invocation_id="i1", author="concierge", content=types.Content(role="model", parts=[
            types.Part(function_call=types.FunctionCall(id="t1", name="transfer_to_agent", args={"agent_name": "booker"}))]),
            actions=EventActions(transfer_to_agent="booker")),
        Event(invocation_id="i1", author="booker", branch="concierge.booker", content=types.Content(role="model", parts=[
            types.Part(text="Pick a seat."),
            types.Part(function_call=types.FunctionCall(id="c1", name="select_seat", args={"cabin": "economy"}))]),
            long_running_tool_ids={"c1"}),
        Event(invocation_id="i1", author="booker", content=types.Content(role="user", parts=[
            types.Part(function_response=types.FunctionResponse(id="s1", name="lookup", response={"ok": True}))]),
            actions=EventActions(state_delta={"app:tier": "gold", "user:name": "Ada", "temp:scratch": 1, "step": "seat"},
                                 artifact_delta={"map.png": 0}, escalate=True)),
        Event(invocation_id="i2", author="user", content=types.Content(role="user", parts=[
            types.Part(function_response=types.FunctionResponse(id="c1", name="select_seat", response={"seat": "2A"})),
            types.Part(inline_data=types.Blob(mime_type="image/png", data=b"\x89PNG"))])),
        Event(invocation_id="i2", author="booker", content=text("model", "Seat 2A it is."),
              actions=EventActions(state_delta={"step": "done"})),
    ]

    class S:  # a Session-shaped object, as ADK's sessions are
        id, app_name, user_id, state, last_update_time = "s1", "app", "ada", {"step": "done"}, 0.0

    S.events = events
    return S


def test_every_event_kind_maps_onto_turns():
    t = adk.transcript(every_kind_session())
    first, second = t.turns
    assert first.user_text == "book me a seat" and first.text == "Pick a seat."
    assert [c.name for c in first.tool_calls] == ["select_seat"] and first.tool_calls[0].args == {"cabin": "economy"}
    assert first.transfers == [{"target_agent": "booker", "display_name": "booker"}]
    assert any("long-running" in n for n in first.notes) and any("escalated" in n for n in first.notes)
    lines = first.events
    assert {"author": "booker", "branch": "concierge.booker", "long_running_tool_ids": ["c1"]} in lines
    delta_line = next(e for e in lines if "state_delta" in e)
    assert delta_line["artifact_delta"] == {"map.png": 0} and delta_line["escalate"] and delta_line["state_delta"]["app:tier"] == "gold"
    assert any(e.get("transfer_to_agent") == "booker" for e in lines)
    kinds = [i.kind for i in second.inputs]
    assert kinds == ["tool_responses", "image"] and second.inputs[0].value[0].response == {"seat": "2A"}
    assert second.text == "Seat 2A it is."
    html = t._repr_mimebundle_()["text/html"]
    assert "transferred to booker" in html and "concierge.booker" in html and "map.png" in html
    calls = frames.tool_calls_frame(t)
    assert calls.loc[calls.tool == "select_seat", "response"].iloc[0] == {"seat": "2A"}


def test_state_timeline_follows_prefixes():
    timeline = adk.state_timeline(every_kind_session())
    assert list(timeline.columns) == ["app:tier", "user:name", "temp:scratch", "step"]
    assert timeline.loc[1, "step"] == "seat" and timeline.loc[2, "step"] == "done"
    assert timeline.loc[2, "user:name"] == "Ada"  # persists
    assert timeline.loc[1, "temp:scratch"] == 1 and timeline.isna().loc[2, "temp:scratch"]  # temp: only in its turn


class Scripted(BaseLlm):
    """Calls save_note with the user's words, then confirms."""

    model: str = "scripted"

    async def generate_content_async(self, llm_request, stream=False):
        part = llm_request.contents[-1].parts[0]
        if part.function_response:
            yield LlmResponse(content=text("model", "Saved."))
        else:
            yield LlmResponse(content=types.Content(role="model", parts=[
                types.Part(function_call=types.FunctionCall(name="save_note", args={"text": part.text}))]))


async def save_note(text: str, tool_context: ToolContext) -> dict:
    tool_context.state["user:notes"] = tool_context.state.get("user:notes", 0) + 1
    await tool_context.save_artifact("note.txt", types.Part(text=text))
    return {"saved": True}


def run_notes(service, artifacts, texts):
    runner = Runner(app_name="notes", agent=LlmAgent(name="notes", model=Scripted(), tools=[save_note]),
                    session_service=service, artifact_service=artifacts)

    async def go():
        session = await service.create_session(app_name="notes", user_id="ada")
        for t in texts:
            async for _ in runner.run_async(user_id="ada", session_id=session.id, new_message=text("user", t)):
                pass
        return await service.get_session(app_name="notes", user_id="ada", session_id=session.id)

    return asyncio.run(go())


@pytest.mark.parametrize("store", ["memory", "database"])
def test_sessions_frame_from_any_session_service(store, tmp_path):
    service = InMemorySessionService() if store == "memory" else DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{tmp_path}/s.db")
    artifacts = InMemoryArtifactService()
    session = run_notes(service, artifacts, ["buy milk", "call mom"])
    frame = adk.sessions(service, "notes", "ada")
    assert list(frame.id) == [session.id] and frame.turns.iloc[0] == 2 and frame.state_keys.iloc[0] == ["user:notes"]
    t = adk.transcript(session)
    assert [turn.user_text for turn in t.turns] == ["buy milk", "call mom"] and t.turns[1].text == "Saved."
    view = adk.artifacts(artifacts, "notes", "ada", session.id)
    assert view.frame.versions.iloc[0] == [0, 1] and "call mom" in view._repr_html_()


def test_memory_search_renders_results():
    service, artifacts = InMemorySessionService(), InMemoryArtifactService()
    session = run_notes(service, artifacts, ["remember the blue suitcase"])
    memory = InMemoryMemoryService()
    asyncio.run(memory.add_session_to_memory(session))
    view = adk.memory_search(memory, "notes", "ada", "suitcase")
    assert len(view.memories) >= 1 and "blue suitcase" in view._repr_html_()
    assert f"{len(view.memories)} result(s)" in repr(view) and "suitcase" in repr(view)


def test_captured_otel_spans_map_to_the_same_span_model():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent notes", attributes={"gen_ai.agent.name": "notes"}):
        with tracer.start_as_current_span("generate_content scripted", attributes={"gen_ai.agent.name": "notes"}):
            pass
        with tracer.start_as_current_span("execute_tool save_note", attributes={"gen_ai.tool.name": "save_note"}):
            pass
    (root,) = adk.spans_from_otel(exporter.get_finished_spans())
    # As the emulator maps its own: the agent layer gives way to its LLM and Tool spans.
    assert root.name == "root" and [c.kind for c in root.children] == ["LLM", "Tool"]
    assert root.children[1].attributes["name"] == "save_note" and root.children[0].attributes["agent"] == "notes"
    assert root.children[1].attributes["agent"] == "notes" and "tool call id" not in root.children[1].attributes
    frame = frames.spans_frame(root)
    assert list(frame.depth) == [0, 1, 1] and frame.duration_ms.notna().all()


def test_the_explorer_and_the_emulator_share_one_otel_mapping():
    """The same spans through the emulator's build_root_span (a proto) and the explorer's
    spans_from_otel (a record) give the same tree."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ces_nb.convert.session_output import span_from_pb
    from ces_nb.emulator.tracing import ToolRecord, build_root_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("ces.turn"):
        with tracer.start_as_current_span("invoke_agent notes", attributes={"gen_ai.operation.name": "invoke_agent",
                                                                             "gen_ai.agent.name": "notes"}):
            with tracer.start_as_current_span("generate_content scripted", attributes={"gen_ai.operation.name": "generate_content",
                                                                                        "gen_ai.request.model": "scripted"}):
                pass
            with tracer.start_as_current_span("execute_tool save_note", attributes={"gen_ai.operation.name": "execute_tool",
                                                                                     "gen_ai.tool.name": "save_note",
                                                                                     "gen_ai.tool.call.id": "c1"}):
                pass
    spans = exporter.get_finished_spans()
    top = next(s for s in spans if s.name == "ces.turn")
    emulated = span_from_pb(build_root_span(top, list(spans), {"notes": "Notes"}, {"c1": ToolRecord("save_note", "save_note", {"a": 1})}, None))
    (explored,) = adk.spans_from_otel(spans)
    assert [(c.name, c.attributes.get("model")) for c in emulated.children] == [("LLM", "scripted"), ("Tool", None)]
    assert [c.name for c in explored.children] == [c.name for c in emulated.children]
    assert (explored.start_ns, explored.end_ns) == (emulated.start_ns, emulated.end_ns)
    assert emulated.children[1].attributes == {"agent": "Notes", "args": {"a": 1}, "name": "save_note", "tool call id": "c1"}
    assert explored.children[1].attributes == {"agent": "notes", "name": "save_note"}  # no display names, no events: no args


def test_the_emulators_own_store_reads_as_adk_sessions(tmp_path):
    import ces_nb
    from conftest import EmulatorProcess

    db = tmp_path / "emulator.db"
    server = EmulatorProcess("--db", str(db), "--workers", "1")  # the store, not the workers (test_workers.py)
    try:
        client = ces_nb.connect("projects/p/locations/us/apps/skyway", endpoint=server.address)
        session = client.session()
        session.send("Hello")
        session.send("What's the status of flight SW12?")
        client.close()
    finally:
        server.stop()
    service = DatabaseSessionService(db_url=f"sqlite+aiosqlite:///{db}")
    frame = adk.sessions(service, "skyway", "ces")
    assert session.id in set(frame.id)
    stored = asyncio.run(service.get_session(app_name="skyway", user_id="ces", session_id=session.id))
    t = adk.transcript(stored)
    assert [turn.user_text for turn in t.turns if turn.user_text][:2] == ["Hello", "What's the status of flight SW12?"]
    assert "SW12" in " ".join(turn.text for turn in t.turns)
