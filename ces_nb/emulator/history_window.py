"""Constant-cost turns: the runner sees a window of a long session, the playback model a digest
of what came before it.

ADK walks, filters and copies every event of the session it runs on, several times per model
call (building the request's contents, routing, rewinds, telemetry of every message), so on
the whole session a turn's cost grows with the conversation: turn 200 cost 8x turn 1.

With the offline playback model, a turn runs on a window instead (`TurnStore.begin`): the
previous complete turn and the current one, stretched back to the last agent that spoke (ADK
routes the next message to it), to any client tool call still waiting for its answer, and to
the call of every tool response it holds. What
the playback model reads of the earlier conversation (how many users turns and tool calls, the
last user utterances, every tool argument and response) is kept as a `HistoryDigest`, extended
turn by turn, and handed to it through `PRIOR_HISTORY`.

A real model (`--model`) runs on the whole session, as on CES: it reads its full history.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from google.adk.events import Event

# Our turn record's invocation id (runtime.py): the end of a completed turn.
TURN_RECORD_PREFIX = "ces-turn-"
# How many user utterances the playback model reads back (playback.PlaybackLlm.choose).
USERS_KEPT = 3


@dataclass
class HistoryDigest:
    """What the playback model reads of the events before the window, in O(1)."""

    upto: int = 0  # events[:upto] are digested
    user_count: int = 0
    users_tail: list[str] = field(default_factory=list)  # the last USERS_KEPT user utterances
    call_count: int = 0
    values: dict[str, Any] = field(default_factory=dict)  # every tool call's args and response, latest winning
    words: int = 0  # words of text, for the model's prompt token count

    def extend(self, events: list[Event], upto: int) -> None:
        for event in events[self.upto:upto]:
            content = event.content
            if content is None or not content.parts:
                continue
            user_text = []
            for part in content.parts:
                if part.text:
                    self.words += len(part.text.split())
                if part.function_call:
                    self.call_count += 1
                    if isinstance(part.function_call.args, dict):
                        self.values.update(part.function_call.args)
                elif part.function_response:
                    if isinstance(part.function_response.response, dict):
                        self.values.update(part.function_response.response)
                elif part.text and not part.thought and content.role == "user" and event.author == "user":
                    user_text.append(part.text)
                elif part.inline_data and content.role == "user" and event.author == "user":
                    kind = "image" if (part.inline_data.mime_type or "").startswith("image/") else "blob"
                    user_text.append(f"[{kind} {part.inline_data.mime_type}]")
            if user_text:
                self.user_count += 1
                self.users_tail = [*self.users_tail, " ".join(user_text)][-USERS_KEPT:]
        self.upto = max(self.upto, upto)


# The digest of the events before the current turn's window; None when the model sees them all.
PRIOR_HISTORY: contextvars.ContextVar[HistoryDigest | None] = contextvars.ContextVar("ces_prior_history", default=None)


def window_start(events: list[Event], pending_call_ids: set[str]) -> int:
    """Where the runner's window on `events` starts: after the turn record that precedes the
    previous complete turn, stretched back to the last agent-authored event, to every call
    in `pending_call_ids` and to the call of every response in the window. 0 (the whole session) when the session is short."""
    records = 0
    seen_agent = False
    waiting = set(pending_call_ids)
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        if event.author != "user":
            seen_agent = True
        # A response in the window needs its call there too, or ADK drops it as an orphan.
        waiting.update(r.id for r in event.get_function_responses() if r.id)
        if waiting:
            for call in event.get_function_calls():
                waiting.discard(call.id)
        if (event.invocation_id or "").startswith(TURN_RECORD_PREFIX):
            records += 1
            if records >= 2 and seen_agent and not waiting:
                return i + 1
    return 0
