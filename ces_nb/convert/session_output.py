"""SessionOutput protos (RunSession, StreamRunSession, a bidi stream's session_output) -> Turn.

The common outputs are read field by field, and the root span straight from its proto:
the span tree is most of a turn's bytes, and a JSON detour through its timestamps costs.
"""

from __future__ import annotations

from typing import Any, Iterable

from google.protobuf import json_format

from ..model import Output, Span, Turn, UserInput, sorted_keys
from .protos import as_dict, raw_pb, struct_to_dict


def turn_from_outputs(outputs: Iterable[Any], inputs: Iterable[Any] = ()) -> Turn:
    """From SessionOutput protos (or their dicts), e.g. a RunSessionResponse's outputs, and
    the SessionInputs (protos or dicts) that asked for them."""
    turn = Turn(inputs=inputs_from(inputs))
    for output in outputs:
        add_output(turn, output)
    return turn


def inputs_from(inputs: Iterable[Any]) -> list[UserInput]:
    return [i for i in (UserInput.from_dict(as_dict(x)) for x in inputs) if i is not None]


def add_output(turn: Turn, output: Any) -> Output | None:
    """Fold one SessionOutput (proto or dict) into the turn; returns the Output it held, if any."""
    return turn.add_output(output if isinstance(output, dict) else output_dict(output))


def output_dict(output: Any) -> dict:
    """A SessionOutput proto -> its JSON-shaped dict, the root span already a Span."""
    pb = raw_pb(output)
    d: dict = {"turn_index": pb.turn_index, "turn_completed": pb.turn_completed}
    kind = pb.WhichOneof("output_type")
    if kind in ("text", "audio"):
        d[kind] = getattr(pb, kind)
    elif kind == "payload":
        d[kind] = struct_to_dict(pb.payload)
    elif kind == "tool_calls" and not any(c.HasField("toolset_tool") for c in pb.tool_calls.tool_calls):
        d[kind] = {"tool_calls": [{"id": c.id, "tool": c.tool, "display_name": c.display_name, "args": struct_to_dict(c.args)}
                                  for c in pb.tool_calls.tool_calls]}
    elif kind == "citations":
        d[kind] = {"cited_chunks": [{"uri": c.uri, "title": c.title, "text": c.text, "requires_attribution": c.requires_attribution}
                                    for c in pb.citations.cited_chunks]}
    elif kind == "end_session":
        d[kind] = {"metadata": struct_to_dict(pb.end_session.metadata)}
    elif kind is not None:
        d[kind] = sorted_keys(json_format.MessageToDict(getattr(pb, kind), preserving_proto_field_name=True))
    if pb.HasField("diagnostic_info"):
        info = pb.diagnostic_info
        d["diagnostic_info"] = {
            # Not key-sorted: messages are never drawn key by key, and saving sorts anyway.
            "messages": [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in info.messages],
            "root_span": span_from_pb(info.root_span) if info.HasField("root_span") else None,
        }
    return d


def span_from_pb(message: Any) -> Span:
    """A google.cloud.ces.v1.Span (protobuf or proto-plus) and its children as a Span, iteratively."""
    pb = raw_pb(message)
    root = _one_span(pb)
    stack = [(root, pb)]
    while stack:
        span, raw = stack.pop()
        for child_pb in raw.child_spans:
            child = _one_span(child_pb)
            span.children.append(child)
            stack.append((child, child_pb))
    return root


def _one_span(m: Any) -> Span:
    start = m.start_time.ToNanoseconds() if m.HasField("start_time") else None
    end = m.end_time.ToNanoseconds() if m.HasField("end_time") else None
    duration = m.duration.ToNanoseconds() if m.HasField("duration") else (end - start if start is not None and end is not None else None)
    attributes = struct_to_dict(m.attributes) if m.HasField("attributes") else {}
    return Span(m.name, start, end, duration, attributes)
