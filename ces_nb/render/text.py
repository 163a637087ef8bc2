"""Deterministic text/plain for turns and transcripts."""

from __future__ import annotations

import json

from ..model import ToolResult, Transcript, Turn, UserInput


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


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

        info = soundfile.info(io.BytesIO(data))
        return f"{info.frames / info.samplerate:.1f} s"
    return f"{len(data)} bytes"


def turn_text(turn: Turn) -> str:
    status = "partial" if turn.partial else ("completed" if turn.completed else "waiting")
    lines = [f"Turn {turn.index} ({status})"]
    if turn.inputs:
        lines.append("user:  " + " ".join(input_text(i) for i in turn.inputs))
    if turn.heard:
        lines.append(f"heard: {turn.heard}")
    if turn.text:
        lines.append("agent: " + turn.text.replace("\n", "\n       "))
    for transfer in turn.transfers:
        lines.append(f"  -> transferred to {transfer.get('display_name') or transfer.get('target_agent')}")
    if turn.audio:
        lines.append(f"  audio: {len(turn.audio)} bytes {turn.audio_encoding} {turn.audio_sample_rate} Hz")
    for call in turn.tool_calls:
        lines.append(f"  tool call {call.name} (id {call.id}): {_json(call.args)}")
    for i, c in enumerate(turn.citations, 1):
        lines.append(f"  [{i}] {c.title} <{c.uri}>" + (" (attribution required)" if c.requires_attribution else ""))
    for s in turn.of_kind("google_search_suggestions"):
        lines.append("  search suggestions: " + ", ".join(q["query"] for q in s.queries))
    for payload in turn.payloads:
        lines.append(f"  payload: {_json(payload)}")
    if turn.end_session is not None:
        lines.append(f"  session ended: {_json(turn.end_session)}")
    if turn.interrupted:
        at = turn.interrupted_at_ms
        lines.append("  barge-in: the user spoke over the agent, which stopped" + (f" {at / 1000:.1f} s into its reply" if at is not None else ""))
    for event in turn.events:
        if "recognition_result" not in event and "interruption_signal" not in event:
            lines.append(f"  event: {_json(event)}")
    if turn.error:
        lines.append(f"  error: {turn.error}")
    for note in turn.notes:
        lines.append(f"  note: {note}")
    if turn.root_span is not None:
        kinds: dict[str, int] = {}
        for _, span in turn.root_span.walk():
            if span is not turn.root_span:
                kinds[span.kind] = kinds.get(span.kind, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
        latency = turn.perceived_latency_ms
        lines.append(
            f"  spans: {turn.root_span.name} {_ms(turn.root_span.duration_ms)}"
            + (f", perceived latency {_ms(latency)}" if latency is not None else "")
            + (f"; {summary}" if summary else "")
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "? ms" if value is None else f"{value:.1f} ms"


def transcript_text(transcript: Transcript) -> str:
    head = f"Transcript {transcript.session or '(unsaved)'}: {len(transcript.turns)} turn(s)"
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
