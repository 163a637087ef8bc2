"""ADK sessions in the same views as CES turns: a Transcript per session (ces_nb.convert.adk_events),
a DataFrame of sessions from any BaseSessionService, a state timeline, artifacts and memory
search. Captured ADK OpenTelemetry spans map to the same Span model, through the emulator's
own mapping (ces_nb.convert.otel).
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from ..convert.adk_events import transcript  # noqa: F401 (ces_nb.adk.transcript)
from ..convert.otel import root_spans
from ..coroutines import run_sync
from ..model import Span, sorted_keys


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


def spans_from_otel(spans: Iterable[Any]) -> list[Span]:
    """ADK's OpenTelemetry spans (ReadableSpan, e.g. from an InMemorySpanExporter) as Span
    trees, one per trace, mapped as the emulator maps its own (LLM, Tool, Callback and
    Guardrail spans, named and attributed as CES names them)."""
    return root_spans(spans, _span)


def _span(name: str, start_ns: int, end_ns: int, attributes: dict, children: list) -> Span:
    return Span(name, start_ns, end_ns, end_ns - start_ns, sorted_keys(attributes), children)
