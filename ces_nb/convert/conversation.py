"""Stored conversations (AgentService Conversation and Conversation.Turn) -> Transcript and Turn."""

from __future__ import annotations

from typing import Any

from ..model import Message, Span, Transcript, Turn, get_field, io_from_messages
from .protos import as_dict


def transcript_from_conversation(conversation: Any) -> Transcript:
    """From an AgentService Conversation (proto or JSON)."""
    return Transcript.from_dict(as_dict(conversation))


def turn_from_conversation_turn(conversation_turn: Any, index: int = 0) -> Turn:
    """From a stored Conversation.Turn: its messages and root_span are all there is,
    so the user's chunks become inputs and the agent's chunks become outputs."""
    d = as_dict(conversation_turn)
    turn = Turn(index=index, completed=True)
    turn.messages = [Message.from_dict(m) for m in get_field(d, "messages") or []]
    if get_field(d, "root_span"):
        turn.root_span = Span.from_dict(get_field(d, "root_span"))
    turn.inputs, turn.outputs = io_from_messages(turn.messages, index)
    if turn.outputs:
        turn.outputs[-1].turn_completed = True
    return turn
