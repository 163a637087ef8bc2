"""Deterministic text/plain for turns and transcripts.

Like xarray's formatting functions, these take a record and return a string. They import
no record class (ces_nb.model calls them for its reprs), only read the records' fields.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only
    from ..model import ToolResult, Transcript, Turn, UserInput


def integral(value, _depth: int = 0):
    """Whole floats as ints, through dicts and lists: protobuf Struct keeps every number as a
    double, so a token count of 33 arrives as 33.0 and should read 33."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if _depth > 64:  # deeper data is shown as it came
        return value
    if isinstance(value, dict):
        return {k: integral(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v, _depth + 1) for v in value]
    return value


def _json(value) -> str:
    return json.dumps(integral(value), ensure_ascii=False, sort_keys=True)


def input_text(item: UserInput) -> str:
    v = item.value
    if item.kind == "text":
        return str(v)
    if item.kind in ("dtmf", "event"):
        return f"[{item.kind} {v}]"
    if item.kind == "variables":
        return f"[variables {_json(v)}]"
    if item.kind in ("image", "blob"):
        return f"[{item.kind} {v[0]}, {len(v[1])} bytes]"
    if item.kind == "audio":
        return f"[audio {_audio_seconds(v)}]"
    if item.kind == "tool_responses":
        return " ".join(f"[tool response {r.id} {_json(r.response)}]" for r in v)
    return f"[{item.kind}]"


def _audio_seconds(data: bytes) -> str:
    if data[:4] == b"RIFF":
        import io

        import soundfile

        try:
            info = soundfile.info(io.BytesIO(data))
        except Exception:  # a corrupt WAV: say what it is, draw the rest
            return f"{len(data)} bytes, not a readable WAV"
        return f"{info.frames / info.samplerate:.1f} s"
    return f"{len(data)} bytes"


def unreadable(turn: Turn) -> bool:
    """A turn that came from a file with nothing readable in it, only load errors."""
    return bool(turn.load_errors) and not (turn.inputs or turn.outputs or turn.messages or turn.root_span is not None)


def broken_message(turn: Turn, exc: BaseException) -> str:
    return (f"Turn {turn.index} could not be drawn ({type(exc).__name__}: {exc}); the other turns are unaffected. "
            "Its parts are in turn.inputs, turn.outputs and turn.root_span")


def turn_text(turn: Turn) -> str:
    """The turn as text; a turn that cannot be drawn says so, so the turns around it still show."""
    try:
        return _turn_text(turn)
    except Exception as exc:
        return f"Turn {turn.index} (unreadable)\n  error: {broken_message(turn, exc)}"


def _turn_text(turn: Turn) -> str:
    status = "unreadable" if unreadable(turn) else "partial" if turn.partial else ("completed" if turn.completed else "waiting")
    lines = [f"Turn {turn.index} ({status})"]
    for section in _SECTIONS:
        lines.extend(section(turn))
    return "\n".join(lines)


def _problems(turn: Turn) -> list[str]:
    return [f"  unreadable: {problem} (left out)" for problem in turn.load_errors]


def _user(turn: Turn) -> list[str]:
    lines = ["user:  " + " ".join(input_text(i) for i in turn.inputs)] if turn.inputs else []
    if turn.heard:
        lines.append(f"heard: {turn.heard}")
    return lines


def _agent(turn: Turn) -> list[str]:
    lines = ["agent: " + turn.text.replace("\n", "\n       ")] if turn.text else []
    lines += [f"  -> transferred to {t.get('display_name') or t.get('target_agent')}" for t in turn.transfers]
    if turn.audio:
        lines.append(f"  audio: {len(turn.audio)} bytes {turn.audio_encoding} {turn.audio_sample_rate} Hz")
    return lines


def _tool_calls(turn: Turn) -> list[str]:
    return [f"  tool call {call.name} (id {call.id}): {_json(call.args)}" for call in turn.tool_calls]


def _citations(turn: Turn) -> list[str]:
    return [f"  [{i}] {c.title} <{c.uri}>" + (" (attribution required)" if c.requires_attribution else "")
            for i, c in enumerate(turn.citations, 1)]


def _suggestions(turn: Turn) -> list[str]:
    return ["  search suggestions: " + ", ".join(q["query"] for q in s.queries) for s in turn.search_suggestions]


def _payloads(turn: Turn) -> list[str]:
    return [f"  payload: {_json(payload)}" for payload in turn.payloads]


def _ending(turn: Turn) -> list[str]:
    """The session's end, and a barge-in that cut the agent short."""
    lines = [f"  session ended: {_json(turn.end_session)}"] if turn.end_session is not None else []
    if turn.interrupted:
        at = turn.interrupted_at_ms
        lines.append("  barge-in: the user spoke over the agent, which stopped" + (f" {at / 1000:.1f} s into its reply" if at is not None else ""))
    return lines


def _events(turn: Turn) -> list[str]:
    """Bidi events other than recognition and barge-in (shown above), e.g. go_away."""
    return [f"  event: {_json(e)}" for e in turn.events if "recognition_result" not in e and "interruption_signal" not in e]


def _notes(turn: Turn) -> list[str]:
    return ([f"  error: {turn.error}"] if turn.error else []) + [f"  note: {note}" for note in turn.notes]


def _spans(turn: Turn) -> list[str]:
    root = turn.root_span
    if root is None:
        return []
    kinds: dict[str, int] = {}
    for _, span in root.walk():
        if span is not root:
            kinds[span.kind] = kinds.get(span.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
    latency = turn.perceived_latency_ms
    return [f"  spans: {root.name} {_ms(root.duration_ms)}"
            + (f", perceived latency {_ms(latency)}" if latency is not None else "")
            + (f"; {summary}" if summary else "")]


# The turn's text, section by section, in this order.
_SECTIONS = (_problems, _user, _agent, _tool_calls, _citations, _suggestions, _payloads, _ending, _events, _notes, _spans)


def _ms(value: float | None) -> str:
    return "? ms" if value is None else f"{value:.1f} ms"


def transcript_text(transcript: Transcript) -> str:
    head = f"Transcript {transcript.session or '(unsaved)'}: {len(transcript.turns)} turn(s)"
    head += "".join(f"\n  unreadable: {problem} (left out)" for problem in transcript.load_errors)
    return "\n\n".join([head, *(turn_text(t) for t in transcript.turns)])


def chain_text(turn: Turn) -> str:
    """A turn and the turns that answered its tool calls automatically."""
    return "\n".join(turn_text(t) for t in turn.chain)


def tool_result_text(result: ToolResult) -> str:
    lines = [f"Tool {result.name}({_json(result.args)})" + (" [mocked]" if result.mocked else "")]
    lines.append(f"  response: {_json(result.response)}")
    for i, c in enumerate(result.citations, 1):
        lines.append(f"  [{i}] {c.title} <{c.uri}>")
    if result.variables:
        lines.append(f"  variables: {_json(result.variables)}")
    return "\n".join(lines)
