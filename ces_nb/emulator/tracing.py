"""Turn the OpenTelemetry spans ADK really emits into the CES root_span tree.

Each turn opens a span named `ces.turn`; every ADK span of that turn lands in
the same trace, and a span processor hands finished spans to the turn by trace
id. The mapping (ces_nb/convert/otel.py, shared with the explorer) keeps real
timestamps and durations and renames to CES's shape:

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

import threading
from typing import Any

from google.cloud import ces_v1
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

# The mapping itself is shared with the explorer; ToolRecord is what runtime.py fills in.
from ..convert.otel import ToolRecord, root_span  # noqa: F401 (ToolRecord: for runtime.py)

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


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The emulator's tracer, made once: the SDK builds a new Tracer on every get_tracer (about
    50 us), and a turn with callbacks asks for one per span. The provider it comes from is the
    process's for good (OpenTelemetry lets it be set once)."""
    global _tracer
    if _tracer is None:
        turn_router()
        _tracer = trace.get_tracer("ces_nb.emulator")
    return _tracer


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


SpanPb = ces_v1.Span.pb()


def _span_pb(name: str, start: int, end: int, attributes: dict, children: list):
    return SpanPb(
        name=name,
        start_time=_ts(start),
        end_time=_ts(end),
        duration=duration_pb2.Duration(seconds=(end - start) // 10**9, nanos=(end - start) % 10**9),
        attributes=_struct(attributes),
        child_spans=children,
    )


def build_root_span(
    turn_span: ReadableSpan,
    spans: list[ReadableSpan],
    agent_names: dict[str, str],
    tools_by_id: dict[str, ToolRecord],
    perceived_latency_ns: int | None,
):
    """The CES root span for one turn, from the turn span and its descendants, as a raw
    protobuf Span (`ces_v1.Span.wrap` it for proto-plus)."""
    return root_span(turn_span, spans, _span_pb, agent_names=agent_names, tools_by_id=tools_by_id,
                     perceived_latency_ns=perceived_latency_ns)
