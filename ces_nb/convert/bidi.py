"""BidiRunSession server messages -> Turn: session outputs, plus the recognition results,
barge-ins, end_session and go_away events only a bidi stream carries."""

from __future__ import annotations

from typing import Any, Iterable

from ..model import Output, Turn, get_field, has_field
from .protos import as_dict, raw_pb
from .session_output import add_output, inputs_from

EVENT_KINDS = ("recognition_result", "interruption_signal", "end_session", "go_away")


def turn_from_bidi(messages: Iterable[Any], inputs: Iterable[Any] = ()) -> Turn:
    """From BidiSessionServerMessages (protos or dicts)."""
    turn = Turn(inputs=inputs_from(inputs))
    for message in messages:
        add_message(turn, message)
    return turn


def add_message(turn: Turn, message: Any) -> Output | None:
    """Fold one BidiSessionServerMessage into the turn; returns the Output it held, if any."""
    if not isinstance(message, dict):
        if raw_pb(message).WhichOneof("message_type") == "session_output":
            return add_output(turn, message.session_output)
        message = as_dict(message)
    if has_field(message, "session_output"):
        return add_output(turn, get_field(message, "session_output"))
    for kind in EVENT_KINDS:
        if has_field(message, kind):
            event = {kind: get_field(message, kind) or {}}
            if kind == "interruption_signal":
                event["after_audio_ms"] = round(turn.audio_ms, 1)  # where, in the agent's reply, it was cut
            turn.events.append(event)
    return None
