"""What the agent did in the turns that answered one user turn, read from `Turn`s public accessors.

The one place that reads a Turn for scoring: text, tool calls with their responses (client calls
from `turn.tool_calls`, server-run ones from the diagnostic messages), transfers, updated
variables, end of session, payloads, and span latencies by kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SYSTEM_TOOLS = ("end_session", "transfer_to_agent")


@dataclass
class ObservedCall:
    name: str
    args: dict
    id: str = ""
    response: Any = None


@dataclass
class Observation:
    text: str = ""
    messages: list[str] = field(default_factory=list)  # the agent's messages, one by one (paragraphs of its text)
    calls: list[ObservedCall] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    variables: dict = field(default_factory=dict)
    ended: bool = False
    end_args: dict = field(default_factory=dict)
    payloads: list = field(default_factory=list)
    latency_ms: float | None = None
    spans: list[tuple[str, float]] = field(default_factory=list)  # (kind, ms); "turn" is the whole turn

    def values(self, variables: dict) -> dict:
        """What `{placeholders}` in expected text may name: the session variables, then the tool responses."""
        out = dict(variables)
        out.update(self.variables)
        for call in self.calls:
            if isinstance(call.response, dict):
                out.update(call.response)
        return out


def _chunks(turn, role: str | None = None):
    for message in turn.messages:
        if role is None or message.role == role:
            for chunk in message.chunks:
                yield chunk


def observe(turns: list) -> Observation:
    seen = Observation()
    texts, by_id = [], {}
    latency = 0.0
    for turn in turns:
        if turn.text:
            texts.append(turn.text)
        for chunk in _chunks(turn):
            value = chunk.value
            if chunk.kind == "tool_call" and getattr(value, "name", "") not in SYSTEM_TOOLS and value.id not in by_id:
                by_id[value.id] = ObservedCall(value.name, dict(value.args or {}), value.id)
                seen.calls.append(by_id[value.id])
            elif chunk.kind == "tool_response" and value.id in by_id:
                by_id[value.id].response = value.response
        for chunk in _chunks(turn, "agent"):
            if chunk.kind == "updated_variables" and isinstance(chunk.value, dict):
                seen.variables.update(chunk.value)
        for call in turn.tool_calls:  # a client call: in turn.tool_calls even with no diagnostics
            if call.name in SYSTEM_TOOLS or call.id in by_id:
                continue
            by_id[call.id] = ObservedCall(call.name, dict(call.args or {}), call.id)
            seen.calls.append(by_id[call.id])
        for r in _responses(turn):
            if r.id in by_id and by_id[r.id].response is None:
                by_id[r.id].response = r.response
        for transfer in turn.transfers:
            seen.transfers.append(transfer.get("display_name") or (transfer.get("target_agent") or "").rsplit("/", 1)[-1])
        if turn.end_session is not None:
            seen.ended = True
            seen.end_args = dict(turn.end_session or {})
        seen.payloads.extend(turn.payloads)
        if turn.root_span is not None:
            for _, span in turn.root_span.walk():
                if span.duration_ms is None:
                    continue
                kind = "turn" if span is turn.root_span else span.kind
                seen.spans.append((kind, span.duration_ms))
            latency += turn.root_span.duration_ms or 0.0
    seen.text = "\n\n".join(texts)
    seen.messages = [p.strip() for t in texts for p in t.split("\n\n") if p.strip()]
    seen.latency_ms = latency if any(t.root_span is not None for t in turns) else None
    return seen


def _responses(turn):
    """The tool responses the client sent in this turn (a continuation's inputs)."""
    for chunk in _chunks(turn, "user"):
        if chunk.kind == "tool_response":
            yield chunk.value
