"""What CES Python code (tools, callbacks, guardrails) sees of its run: the session as its
`context`, and the export file its code came from (so its tracebacks name it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.genai import types

from .export import _ExportFiles
from .playback import adk_name

if TYPE_CHECKING:
    from .export import LoadedApp

MAX_EVENTS = 10  # the session's latest events a call sees (context.events)


def code_filename(app: "LoadedApp | None", code: str, fallback: str) -> str:
    """The export's path of a piece of python code (so tracebacks name it): the .py file
    whose text it is, else `fallback` (code written inline in a JSON or YAML file)."""
    if app is None:
        return fallback
    files = app.__dict__.get("_ces_code_files")
    if files is None:
        files = app.__dict__["_ces_code_files"] = _python_files(app)
    return files.get(code, fallback)


def _python_files(app: "LoadedApp") -> dict[str, str]:
    try:
        export = _ExportFiles(app.source)
    except (OSError, ValueError):
        return {}
    found: dict[str, str] = {}
    for rel in export.names():
        if rel.endswith(".py"):
            try:
                found.setdefault(export.read_text(rel), rel)
            except (OSError, UnicodeDecodeError):
                continue
    return found


def dump(content: types.Content | None) -> dict | None:
    return content.model_dump(mode="json", exclude_none=True) if content is not None else None


def session_context(ctx, app: "LoadedApp | None") -> dict:
    """The session as CES code sees it, from an ADK CallbackContext or ToolContext."""
    state = {k: v for k, v in (ctx.state.to_dict() if hasattr(ctx.state, "to_dict") else ctx.state).items()
             if not k.startswith("_")}
    invocation = ctx._invocation_context  # noqa: SLF001 - the session and its events live only here
    events = []
    for event in reversed(invocation.session.events):
        if event.content is not None and event.content.parts:
            events.append({"author": event.author, "invocation_id": event.invocation_id, "content": dump(event.content)})
            if len(events) >= MAX_EVENTS:
                break
    return {
        "state": state,
        "agent_name": agent_display(app, ctx.agent_name),
        "invocation_id": ctx.invocation_id,
        "session_id": invocation.session.id,
        "user_content": dump(ctx.user_content),
        "events": events[::-1],
    }


def agent_display(app: "LoadedApp | None", name: str) -> str:
    if app is None:
        return name
    return next((d for d in app.agents if d == name or adk_name(d) == name), name)
