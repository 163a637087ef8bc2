"""ADK sessions in the same views as CES turns: a Transcript per session, a DataFrame of
sessions from any BaseSessionService, a state timeline, artifacts and memory search.

Each invocation's events become one Turn: the user's text (and function responses)
are its inputs; agent text and function calls are its outputs; transfers, state and
artifact deltas, escalations, branches and authors are kept on the turn (shown as its
event lines). Captured ADK OpenTelemetry spans map to the same Span model.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Iterable

from ..coroutines import run_sync
from ..model import Chunk, Message, Output, Span, ToolCall, ToolResponse, Transcript, Turn, UserInput, sorted_keys

TRANSFER = "transfer_to_agent"


def transcript(session: Any) -> Transcript:
    """An ADK Session as a Transcript, one Turn per invocation."""
    turns: list[Turn] = []
    by_invocation: dict[str, Turn] = {}
    speakers: dict[str, str] = {}  # invocation -> the agent that spoke last in it
    for event in session.events or []:
        key = event.invocation_id or f"event-{event.id}"
        turn = by_invocation.get(key)
        if turn is None:
            turn = Turn(index=len(turns) + 1, completed=True)
            by_invocation[key] = turn
            turns.append(turn)
        _add_event(turn, event, speakers.get(key))
        if event.author and event.author != "user":
            speakers[key] = event.author
    return Transcript(turns, session=f"adk:{session.app_name}/{session.user_id}/{session.id}", app=session.app_name,
                      metadata={"state": sorted_keys(dict(session.state or {})), "last_update_time": session.last_update_time})


def _add_event(turn: Turn, event: Any, last_speaker: str | None) -> None:
    author = event.author or ""
    is_user = author == "user"
    message = Message("user" if is_user else author)
    long_running = set(event.long_running_tool_ids or ())
    parts = (event.content.parts if event.content and event.content.parts else [])
    for part in parts:
        if part.text and not getattr(part, "thought", False):
            message.chunks.append(Chunk("text", part.text))
            if is_user:
                turn.inputs.append(UserInput("text", part.text))
            elif not event.partial:
                turn.outputs.append(Output("text", part.text, turn.index))
        elif part.function_call:
            call = part.function_call
            args = sorted_keys(dict(call.args or {}))
            if call.name == TRANSFER:
                target = str(args.get("agent_name", ""))
                message.chunks.append(Chunk("agent_transfer", {"target_agent": target, "display_name": target}))
                continue
            tool_call = ToolCall(id=call.id or "", tool=call.name or "", display_name=call.name or "", args=args)
            message.chunks.append(Chunk("tool_call", tool_call))
            turn.outputs.append(Output("tool_calls", [tool_call], turn.index))
            if call.id in long_running:
                turn.notes.append(f"{call.name} ({call.id}) is long-running: it waits for a function response")
        elif part.function_response:
            response = part.function_response
            body = response.response if isinstance(response.response, dict) else {"result": response.response}
            tool_response = ToolResponse(id=response.id or "", tool=response.name or "", display_name=response.name or "",
                                         response=sorted_keys(body))
            message.chunks.append(Chunk("tool_response", tool_response))
            if is_user:
                turn.inputs.append(UserInput("tool_responses", [tool_response]))
        elif part.inline_data:
            kind = "image" if (part.inline_data.mime_type or "").startswith("image/") else "blob"
            value = (part.inline_data.mime_type or "", part.inline_data.data or b"")
            message.chunks.append(Chunk(kind, value))
            if is_user:
                turn.inputs.append(UserInput(kind, value))
    actions = event.actions
    line: dict[str, Any] = {"author": author}
    if event.branch:
        line["branch"] = event.branch
    if actions is not None:
        if actions.state_delta:
            line["state_delta"] = sorted_keys(dict(actions.state_delta))
            message.chunks.append(Chunk("updated_variables", line["state_delta"]))
        if actions.artifact_delta:
            line["artifact_delta"] = sorted_keys(dict(actions.artifact_delta))
        if actions.transfer_to_agent:
            line["transfer_to_agent"] = actions.transfer_to_agent
        if actions.escalate:
            line["escalate"] = True
            turn.notes.append(f"{author} escalated")
    if long_running:
        line["long_running_tool_ids"] = sorted(long_running)
    if message.chunks:
        turn.messages.append(message)
    # A line when something happened beyond words, or when another agent starts speaking.
    if len(line) > 1 or (not is_user and author != last_speaker):
        turn.events.append(line)


def sessions(service: Any, app_name: str, user_id: str | None = None):
    """One row per session of any BaseSessionService (InMemory, Database, the emulator's own
    store): id, user, last update, events, turns (invocations), state keys."""
    import pandas as pd

    async def collect() -> list[dict]:
        listing = await service.list_sessions(app_name=app_name, user_id=user_id)
        rows = []
        for brief in listing.sessions:
            full = await service.get_session(app_name=app_name, user_id=brief.user_id, session_id=brief.id)
            events = full.events if full else []
            rows.append({
                "id": brief.id, "user_id": brief.user_id, "last_update": pd.to_datetime(brief.last_update_time, unit="s", utc=True),
                "events": len(events), "turns": len({e.invocation_id for e in events}),
                "state_keys": sorted((full.state if full else brief.state or {}).keys()),
            })
        return rows

    rows = run_sync(collect())
    frame = pd.DataFrame(rows, columns=["id", "user_id", "last_update", "events", "turns", "state_keys"])
    return frame.sort_values("last_update", ascending=False, kind="stable").reset_index(drop=True)


def state_timeline(session: Any):
    """Each state key's value after each turn (invocation), from the events' state_delta.
    `app:` and `user:` keys persist; `temp:` keys live only in the turn that set them."""
    import pandas as pd

    state: dict[str, Any] = {}
    rows = []
    order: list[str] = []
    for turn_index, events in enumerate(_by_invocation(session.events or []), start=1):
        temp: dict[str, Any] = {}
        for event in events:
            for key, value in ((event.actions.state_delta or {}) if event.actions else {}).items():
                if key not in order:
                    order.append(key)
                (temp if key.startswith("temp:") else state)[key] = value
        rows.append({"turn": turn_index, **state, **temp})
    frame = pd.DataFrame(rows, columns=["turn", *order])
    return frame.set_index("turn")


def _by_invocation(events: Iterable[Any]) -> list[list[Any]]:
    groups: dict[str, list[Any]] = {}
    for event in events:
        groups.setdefault(event.invocation_id or f"event-{event.id}", []).append(event)
    return list(groups.values())


class ArtifactsView:
    """The session's artifacts: versions per file, and a preview of each latest version."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "data"} for r in self.rows],
                            columns=["filename", "versions", "latest", "mime_type", "bytes"])

    def __repr__(self) -> str:
        return "\n".join(f"{r['filename']}: versions {r['versions']}, {r['mime_type']}, {r['bytes']} bytes" for r in self.rows) or "no artifacts"

    def _repr_html_(self) -> str:
        import base64

        cards = []
        for r in self.rows:
            mime, data = r["mime_type"], r["data"]
            if mime.startswith("text/") or mime in ("application/json",):
                preview = f"<pre class='ces-pre'>{escape(data[:2000].decode('utf-8', 'replace'))}</pre>"
            elif mime in ("image/png", "image/jpeg", "image/gif", "image/webp"):
                preview = f"<img class='ces-thumb' alt='{escape(r['filename'])}' src='data:{mime};base64,{base64.b64encode(data).decode()}'>"
            elif mime.startswith("audio/"):
                preview = f"<audio controls preload='none' src='data:{escape(mime)};base64,{base64.b64encode(data).decode()}'></audio>"
            else:
                preview = f"{len(data)} bytes"
            cards.append(f"<div class='ces-card'><b>{escape(r['filename'])}</b> "
                         f"<span class='ces-uri'>versions {escape(str(r['versions']))} · {escape(mime)}</span><div>{preview}</div></div>")
        from ..render.html import stylesheet

        return f"<div class='ces-root'><style>{stylesheet()}</style><div class='ces-cards'>{''.join(cards) or 'no artifacts'}</div></div>"


def artifacts(service: Any, app_name: str, user_id: str, session_id: str) -> ArtifactsView:
    """Files saved through an ADK BaseArtifactService for one session."""

    async def collect() -> list[dict]:
        rows = []
        for filename in sorted(await service.list_artifact_keys(app_name=app_name, user_id=user_id, session_id=session_id)):
            versions = sorted(await service.list_versions(app_name=app_name, user_id=user_id, session_id=session_id, filename=filename))
            part = await service.load_artifact(app_name=app_name, user_id=user_id, session_id=session_id, filename=filename)
            if part is not None and part.inline_data is not None:
                mime, data = part.inline_data.mime_type or "application/octet-stream", part.inline_data.data or b""
            else:
                mime, data = "text/plain", ((part.text if part is not None else "") or "").encode()
            rows.append({"filename": filename, "versions": versions, "latest": versions[-1] if versions else None,
                         "mime_type": mime, "bytes": len(data), "data": data})
        return rows

    return ArtifactsView(run_sync(collect()))


class MemoryView:
    """search_memory results as a table: who said what, and when."""

    def __init__(self, response: Any, query: str = ""):
        self.query = query
        self.memories = list(getattr(response, "memories", response) or [])

    def _rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for memory in self.memories:
            text = " ".join(p.text for p in (memory.content.parts or []) if getattr(p, "text", None)) if memory.content else ""
            rows.append((memory.author or "", str(memory.timestamp or ""), text))
        return rows

    def __repr__(self) -> str:
        return f"memory search {self.query!r}: {len(self.memories)} result(s)\n" + "\n".join(f"  [{a}] {t}" for a, _, t in self._rows())

    def _repr_html_(self) -> str:
        from ..render.html import stylesheet

        body = "".join(f"<tr><td>{escape(a)}</td><td>{escape(w)}</td><td>{escape(t)}</td></tr>" for a, w, t in self._rows())
        return (f"<div class='ces-root'><style>{stylesheet()}</style><div class='ces-head'><b>memory</b>"
                f"<span>{escape(self.query)}</span><span>{len(self.memories)} result(s)</span></div>"
                f"<table class='ces-table'><tr><th>author</th><th>when</th><th>text</th></tr>{body}</table></div>")


def memory_search(service: Any, app_name: str, user_id: str, query: str) -> MemoryView:
    """Run BaseMemoryService.search_memory and render what it found."""
    return MemoryView(run_sync(service.search_memory(app_name=app_name, user_id=user_id, query=query)), query)


_OTEL_KINDS = {"generate_content": "LLM", "call_llm": "LLM", "execute_tool": "Tool"}


def spans_from_otel(spans: Iterable[Any]) -> list[Span]:
    """ADK's OpenTelemetry spans (ReadableSpan, e.g. from an InMemorySpanExporter) as Span
    trees, one per root: LLM and Tool spans named as CES names them, attributes kept."""
    spans = list(spans)
    nodes: dict[int, Span] = {}
    for s in spans:
        name = s.name.split(" ", 1)[0]
        attributes = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "{[" and _is_json(v) else v)
                      for k, v in (s.attributes or {}).items()}
        if name == "execute_tool":
            attributes.setdefault("name", attributes.get("gen_ai.tool.name", s.name.split(" ", 1)[-1]))
        if name in ("generate_content", "call_llm", "invoke_agent"):
            agent = attributes.get("gen_ai.agent.name")
            if agent:
                attributes.setdefault("agent", agent)
        nodes[s.context.span_id] = Span(_OTEL_KINDS.get(name, s.name), s.start_time, s.end_time,
                                        (s.end_time - s.start_time) if s.end_time and s.start_time else None, attributes)
    roots = []
    for s in sorted(spans, key=lambda x: x.start_time or 0):
        node = nodes[s.context.span_id]
        parent = nodes.get(s.parent.span_id) if s.parent is not None else None
        (parent.children if parent is not None else roots).append(node)
    return roots


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
