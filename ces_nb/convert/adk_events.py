"""ADK sessions -> Transcript: each invocation's events become one Turn.

The user's text (and function responses) are its inputs; agent text and function calls
are its outputs; transfers, state and artifact deltas, escalations, branches and authors
are kept on the turn (shown as its event lines).
"""

from __future__ import annotations

from typing import Any

from ..model import Chunk, Message, TextOutput, ToolCall, ToolCallsOutput, ToolResponse, Transcript, Turn, UserInput, sorted_keys

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
        add_event(turn, event, speakers.get(key))
        if event.author and event.author != "user":
            speakers[key] = event.author
    return Transcript(turns, session=f"adk:{session.app_name}/{session.user_id}/{session.id}", app=session.app_name,
                      metadata={"state": sorted_keys(dict(session.state or {})), "last_update_time": session.last_update_time})


def add_event(turn: Turn, event: Any, last_speaker: str | None) -> None:
    """Fold one ADK Event into its invocation's turn."""
    author = event.author or ""
    is_user = author == "user"
    message = Message("user" if is_user else author)
    reader = _PartReader(turn, message, is_user, bool(event.partial), set(event.long_running_tool_ids or ()))
    for part in (event.content.parts if event.content and event.content.parts else []):
        reader.read(part)
    line = _event_line(turn, event, message, author, reader.long_running)
    if message.chunks:
        turn.messages.append(message)
    # A line when something happened beyond words, or when another agent starts speaking.
    if len(line) > 1 or (not is_user and author != last_speaker):
        turn.events.append(line)


class _PartReader:
    """One event's content parts, as the message's chunks and the turn's inputs or outputs."""

    def __init__(self, turn: Turn, message: Message, is_user: bool, partial: bool, long_running: set[str]):
        self.turn, self.message, self.is_user, self.partial, self.long_running = turn, message, is_user, partial, long_running

    def read(self, part: Any) -> None:
        if part.text and not getattr(part, "thought", False):
            self.text(part.text)
        elif part.function_call:
            self.function_call(part.function_call)
        elif part.function_response:
            self.function_response(part.function_response)
        elif part.inline_data:
            self.inline_data(part.inline_data)

    def text(self, text: str) -> None:
        self.message.chunks.append(Chunk("text", text))
        if self.is_user:
            self.turn.inputs.append(UserInput("text", text))
        elif not self.partial:  # a streamed fragment: its whole text follows in a final event
            self.turn.outputs.append(TextOutput(text, self.turn.index))

    def function_call(self, call: Any) -> None:
        args = sorted_keys(dict(call.args or {}))
        if call.name == TRANSFER:
            target = str(args.get("agent_name", ""))
            self.message.chunks.append(Chunk("agent_transfer", {"target_agent": target, "display_name": target}))
            return
        tool_call = ToolCall(id=call.id or "", tool=call.name or "", display_name=call.name or "", args=args)
        self.message.chunks.append(Chunk("tool_call", tool_call))
        self.turn.outputs.append(ToolCallsOutput([tool_call], self.turn.index))
        if call.id in self.long_running:
            self.turn.notes.append(f"{call.name} ({call.id}) is long-running: it waits for a function response")

    def function_response(self, response: Any) -> None:
        body = response.response if isinstance(response.response, dict) else {"result": response.response}
        tool_response = ToolResponse(id=response.id or "", tool=response.name or "", display_name=response.name or "",
                                     response=sorted_keys(body))
        self.message.chunks.append(Chunk("tool_response", tool_response))
        if self.is_user:
            self.turn.inputs.append(UserInput("tool_responses", [tool_response]))

    def inline_data(self, blob: Any) -> None:
        kind = "image" if (blob.mime_type or "").startswith("image/") else "blob"
        value = (blob.mime_type or "", blob.data or b"")
        self.message.chunks.append(Chunk(kind, value))
        if self.is_user:
            self.turn.inputs.append(UserInput(kind, value))


def _event_line(turn: Turn, event: Any, message: Message, author: str, long_running: set[str]) -> dict[str, Any]:
    """What the event did beyond its content: branch, state and artifact deltas, transfer, escalation."""
    line: dict[str, Any] = {"author": author}
    if event.branch:
        line["branch"] = event.branch
    actions = event.actions
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
    return line
