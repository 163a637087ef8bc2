"""Conversations through AgentService: a DataFrame listing, and whole conversations as Transcripts."""

from __future__ import annotations

import concurrent.futures
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from ..convert.conversation import transcript_from_conversation
from ..errors import explain
from ..model import timestamp_ns

COLUMNS = ["name", "start", "end", "turns", "input_types", "entry_agent", "source", "channel"]
PROGRESS_AFTER = 3  # pages, or 3 * page size GetConversation calls: below that, no bar
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(since: Any, now: datetime | None = None) -> datetime | None:
    """'7d', '12h', '30m', '2w', a datetime, or an ISO date -> an aware datetime (None: no bound)."""
    if since in (None, ""):
        return None
    if isinstance(since, datetime):
        return since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    if isinstance(since, timedelta):
        return (now or datetime.now(timezone.utc)) - since
    match = _SINCE.match(str(since))
    if match:
        return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        parsed = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since={since!r}: use a span like '7d', '12h', '30m', or an ISO date like '2026-11-01'") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def list_conversations(client, app: str, since: Any = None, source: str | None = None, details: bool = False,
                       max_workers: int = 8, page_size: int = 100, progress: bool | None = None):
    """One row per conversation (newest first): name, start, end, turns, input types, entry
    agent, source, channel. With `details=True` each conversation is fetched too (GetConversation,
    at most `max_workers` at a time) into a `transcript` column; a failed fetch fills `error`
    for its row instead of stopping the listing."""
    import pandas as pd
    from google.cloud import ces_v1

    bound = parse_since(since)
    request = ces_v1.ListConversationsRequest(parent=app, page_size=page_size)
    if bound is not None:
        request.filter = f'start_time >= "{bound.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"'
    if source:
        try:
            request.source = ces_v1.Conversation.Source[source.upper()]
        except KeyError:
            names = [s.name for s in ces_v1.Conversation.Source if s.value]
            raise ValueError(f"source={source!r}: one of {', '.join(names)}") from None
    rows: list[dict] = []
    try:
        pager = client.agents.list_conversations(request=request)
        bar = _progress(None, "pages", True) if progress else None
        for n, page in enumerate(pager.pages, start=1):
            rows.extend(_row(c) for c in page.conversations)
            if bar is None and progress is None and n == PROGRESS_AFTER:
                bar = _progress(None, "pages", True)  # a long listing: show how far it got
                bar.update(n - 1)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    except Exception as exc:
        raise explain(exc, target=client.target, app=app) from None
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if details and len(frame):
        transcripts, errors = fetch_all(client, list(frame["name"]), max_workers, progress)
        frame["transcript"] = transcripts
        frame["error"] = errors
    return frame


def _row(conversation) -> dict:
    def when(value):
        ns = timestamp_ns(value) if value else None
        return None if not ns else datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)

    return {
        "name": conversation.name,
        "start": when(conversation.start_time),
        "end": when(conversation.end_time),
        "turns": conversation.turn_count,
        "input_types": [t.name for t in conversation.input_types],
        "entry_agent": conversation.entry_agent.rsplit("/", 1)[-1],
        "source": conversation.source.name,
        "channel": conversation.channel_type.name,
    }


def fetch_all(client, names: list[str], max_workers: int = 8, progress: bool | None = None):
    """GetConversation for each name, `max_workers` at a time; (transcripts, errors) in order."""
    transcripts: list[Any] = [None] * len(names)
    errors: list[str | None] = [None] * len(names)
    show = progress if progress is not None else len(names) >= PROGRESS_AFTER * 10
    bar = _progress(len(names), "conversations", show)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = {pool.submit(get_conversation, client, name): i for i, name in enumerate(names)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                transcripts[i] = future.result()
            except Exception as exc:  # reported on its row; the rest carry on
                errors[i] = str(exc)
            bar.update(1)
    bar.close()
    return transcripts, errors


def get_conversation(client, name: str):
    """A stored conversation as a Transcript; its turns render like live ones."""
    try:
        conversation = client.agents.get_conversation(name=name)
    except Exception as exc:
        raise explain(exc, target=client.target) from None
    return transcript_from_conversation(conversation)
