"""Turn the OpenTelemetry spans ADK really emits into the CES root_span tree.

Each turn opens a span named `ces.turn`; every ADK span of that turn lands in
the same trace, and a span processor hands finished spans to the turn by trace
id. The mapping keeps real timestamps and durations and renames to CES's shape:

    root       perceived latency (ms)
      LLM      agent, model, input token count, output token count, time to first chunk (ms)
      Tool     name, agent, args, response (objects, not JSON text), tool call id
      Callback agent, stage (the CES callback, e.g. before_model_callback), name, file,
               returned (None, LlmResponse, Content, dict), error and traceback if it raised
      Guardrail agent, name, type (contentFilter, codeCallback, llmPolicy...), stage,
               decision (OK, TRIGGER; NOT_EVALUATED offline for LLM-judged ones),
               reason, action, evaluated
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from google.cloud import ces_v1
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

TURN_SPAN = "ces.turn"


class _TurnRouter(SpanProcessor):
    """Collects finished spans for the traces of turns in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[int, list[ReadableSpan]] = {}

    def open(self, trace_id: int) -> None:
        with self._lock:
            self._buckets[trace_id] = []

    def close(self, trace_id: int) -> list[ReadableSpan]:
        with self._lock:
            return self._buckets.pop(trace_id, [])

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            bucket = self._buckets.get(span.context.trace_id)
            if bucket is not None:
                bucket.append(span)


_router: _TurnRouter | None = None
_router_lock = threading.Lock()


def turn_router() -> _TurnRouter:
    """Install the router once per process, on the SDK provider in force or a new one."""
    global _router
    with _router_lock:
        if _router is None:
            provider = trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                provider = TracerProvider()
                trace.set_tracer_provider(provider)
            _router = _TurnRouter()
            provider.add_span_processor(_router)
        return _router


def tracer() -> trace.Tracer:
    turn_router()
    return trace.get_tracer("ces_nb.emulator")


@dataclass
class ToolRecord:
    """What the turn's events say about one tool call (ADK does not put args on spans by default)."""

    name: str  # CES display name
    adk_name: str
    args: dict
    response: Any = None


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({k: v for k, v in values.items() if v is not None})
    return s


def _plain(value: Any) -> Any:
    """A tool's args or response as a value a Struct holds (what isn't JSON becomes its str)."""
    return json.loads(json.dumps(value, default=str))


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def build_root_span(
    turn_span: ReadableSpan,
    spans: list[ReadableSpan],
    agent_names: dict[str, str],
    tools_by_id: dict[str, ToolRecord],
    perceived_latency_ns: int | None,
):
    """The CES root span for one turn, from the turn span and its descendants, as a raw
    protobuf Span (`ces_v1.Span.wrap` it for proto-plus)."""
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_time)
    unclaimed = {i: rec for i, rec in tools_by_id.items()}

    def convert(span: ReadableSpan, agent: str) -> list:
        attrs = span.attributes or {}
        op = attrs.get("gen_ai.operation.name")
        agent = agent_names.get(str(attrs.get("gen_ai.agent.name", "")), agent) if op == "invoke_agent" else agent
        nested = [c for kid in children.get(span.context.span_id, []) for c in convert(kid, agent)]
        if op == "generate_content":
            first = next((e.timestamp for e in span.events if e.name == "first_chunk"), span.end_time)
            return [_span("LLM", span, {
                "agent": agent,
                "model": attrs.get("gen_ai.request.model"),
                "input token count": attrs.get("gen_ai.usage.input_tokens"),
                "output token count": attrs.get("gen_ai.usage.output_tokens"),
                "time to first chunk (ms)": _ms(first - span.start_time),
            }, nested)]
        if op == "execute_tool":
            record, call_id = _claim_tool(attrs, unclaimed)
            return [_span("Tool", span, {
                "name": record.name if record else attrs.get("gen_ai.tool.name"),
                "agent": agent,
                # Structured values, as CES reports them and clients read them (cxas-scrapi's
                # turn evals and trace report index attributes["args"] as an object).
                "args": _plain(record.args) if record else None,
                "response": _plain(record.response) if record and record.response is not None else None,
                "tool call id": call_id,
            }, nested)]
        if span.name.startswith("ces.callback"):
            return [_span("Callback", span, {"agent": attrs.get("agent") or agent, "stage": attrs.get("stage"),
                                             **{k: attrs.get(k) for k in CALLBACK_ATTRIBUTES}}, nested)]
        if span.name == "ces.guardrail":
            return [_span("Guardrail", span, {"agent": attrs.get("agent") or agent,
                                              **{k: attrs.get(k) for k in GUARDRAIL_ATTRIBUTES}}, nested)]
        return nested  # workflow / agent layers: their LLM, Tool and Callback spans move up

    root_children = [c for kid in children.get(turn_span.context.span_id, []) for c in convert(kid, "")]
    attributes = {}
    if perceived_latency_ns is not None:
        attributes["perceived latency (ms)"] = _ms(perceived_latency_ns)
    return _span("root", turn_span, attributes, root_children)


def _claim_tool(attrs, unclaimed: dict[str, ToolRecord]) -> tuple[ToolRecord | None, str | None]:
    call_id = attrs.get("gen_ai.tool.call.id")
    if call_id in unclaimed:
        return unclaimed.pop(call_id), call_id
    # Long-running calls have no response event yet, so ADK records no id: match by tool name.
    name = attrs.get("gen_ai.tool.name")
    for cid, record in list(unclaimed.items()):
        if record.adk_name == name:
            return unclaimed.pop(cid), cid
    return None, None


SpanPb = ces_v1.Span.pb()
# Set by callbacks.py / guardrails.py on their spans, beyond agent and stage.
CALLBACK_ATTRIBUTES = ("name", "file", "returned", "error", "traceback")
GUARDRAIL_ATTRIBUTES = ("name", "type", "stage", "decision", "reason", "action", "evaluated")


def _span(name: str, otel: ReadableSpan, attributes: dict, children: list):
    start, end = otel.start_time or 0, otel.end_time or otel.start_time or 0
    return SpanPb(
        name=name,
        start_time=_ts(start),
        end_time=_ts(end),
        duration=duration_pb2.Duration(seconds=(end - start) // 10**9, nanos=(end - start) % 10**9),
        attributes=_struct(attributes),
        child_spans=children,
    )
