"""Turns, outputs, tool calls and spans as pandas DataFrames, plus latency percentiles.

Every function takes what you have: a Turn, a Transcript, a Session, a list of
any of those, or their JSON (snake_case or camelCase, e.g. a saved transcript or
a Conversation dump). Conversations are named by `Transcript.session`.
"""

from __future__ import annotations

from typing import Any, Iterable

from .model import AudioOutput, CitationsOutput, Output, SearchSuggestionsOutput, Span, ToolCallsOutput, Transcript, Turn, json_value
from .render.text import integral

SPAN_COLUMNS = ["conversation", "turn", "index", "parent", "depth", "span", "kind", "start_ms", "duration_ms"]
PERCENTILES = (50, 90, 99)


def transcripts(obj: Any) -> list[Transcript]:
    """Normalize anything turn-shaped into transcripts."""
    if obj is None:
        return []
    if isinstance(getattr(obj, "record", None), Turn):  # a session's LiveTurn
        obj = obj.record
    if isinstance(obj, Transcript):
        return [obj]
    if isinstance(obj, Turn):
        return [Transcript([obj])]
    if hasattr(obj, "transcript") and hasattr(obj, "turns"):  # a Session
        return [obj.transcript]
    if isinstance(obj, Span):
        return [Transcript([Turn(index=1, root_span=obj, completed=True)])]
    if isinstance(obj, dict):
        if "turns" in obj or "format" in obj:
            return [Transcript.from_dict(obj)]
        if "outputs" in obj or "messages" in obj:
            return [Transcript([Turn.from_dict(obj)])]
        if "name" in obj and ("child_spans" in obj or "childSpans" in obj or "attributes" in obj or "duration" in obj):
            return [Transcript([Turn(index=1, root_span=Span.from_dict(obj), completed=True)])]
        raise ValueError("a dict here is a transcript, a turn or a span in JSON; this one has none of their keys")
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        items = [item.record if isinstance(getattr(item, "record", None), Turn) else item for item in obj]
        if items and all(isinstance(t, Turn) for t in items):
            return [Transcript(items)]
        return [t for item in items for t in transcripts(item)]
    raise TypeError(f"expected turns, transcripts, sessions or spans (or their JSON), got {type(obj).__name__}")


def turns_frame(obj: Any):
    """One row per turn: user and agent text, counts of each output kind, latency."""
    import pandas as pd

    rows = []
    for t in transcripts(obj):
        for turn in t.turns:
            root = turn.root_span
            rows.append({
                "conversation": t.session, "turn": turn.index, "user": turn.user_text, "agent": turn.text,
                "input_types": sorted({i.kind for i in turn.inputs}), "tool_calls": len(turn.tool_calls),
                "citations": len(turn.citations), "payloads": len(turn.payloads), "transfers": len(turn.transfers),
                "ended": turn.ended, "completed": turn.completed, "partial": turn.partial, "error": turn.error,
                "duration_ms": root.duration_ms if root else None, "perceived_latency_ms": turn.perceived_latency_ms,
                "spans": sum(1 for _ in root.walk()) if root else 0,
            })
    return pd.DataFrame(rows, columns=["conversation", "turn", "user", "agent", "input_types", "tool_calls", "citations",
                                       "payloads", "transfers", "ended", "completed", "partial", "error", "duration_ms",
                                       "perceived_latency_ms", "spans"])


def outputs_frame(obj: Any):
    """One row per SessionOutput, in order."""
    import pandas as pd

    rows = []
    for t in transcripts(obj):
        for turn in t.turns:
            for position, output in enumerate(turn.outputs):
                rows.append({"conversation": t.session, "turn": turn.index, "position": position, "kind": output.kind,
                             "value": _summary(output), "turn_completed": output.turn_completed})
    return pd.DataFrame(rows, columns=["conversation", "turn", "position", "kind", "value", "turn_completed"])


def _summary(output: Output) -> Any:
    value = output.value
    if isinstance(output, AudioOutput):
        return f"{len(value)} bytes"
    if isinstance(output, ToolCallsOutput):
        return [{"id": c.id, "tool": c.name, "args": c.args} for c in value]
    if isinstance(output, CitationsOutput):
        return [{"title": c.title, "uri": c.uri} for c in value]
    if isinstance(output, SearchSuggestionsOutput):
        return [q["query"] for q in value.queries]
    return value


def tool_calls_frame(obj: Any):
    """One row per tool call: client calls (answered by a later turn's tool_responses) and the
    tools the server ran (its Tool spans)."""
    import pandas as pd

    rows = []
    for t in transcripts(obj):
        responses = {r.id: r.response for turn in t.turns for i in turn.inputs if i.kind == "tool_responses" for r in i.value}
        client_ids = set()
        for turn in t.turns:
            for call in turn.tool_calls:
                client_ids.add(call.id)
                rows.append({"conversation": t.session, "turn": turn.index, "id": call.id, "tool": call.name, "args": call.args,
                             "response": responses.get(call.id), "side": "client", "duration_ms": None})
        for turn in t.turns:
            if turn.root_span is None:
                continue
            for _, span in turn.root_span.walk():
                call_id = span.attributes.get("tool call id")
                if span.kind == "Tool" and call_id not in client_ids:
                    rows.append({"conversation": t.session, "turn": turn.index, "id": call_id, "tool": span.attributes.get("name", ""),
                                 # Struct numbers are doubles: 2.0 in a span is the 2 the tool got.
                                 "args": integral(json_value(span.attributes.get("args"))),
                                 "response": integral(json_value(span.attributes.get("response"))),
                                 "side": "server", "duration_ms": span.duration_ms})
    return pd.DataFrame(rows, columns=["conversation", "turn", "id", "tool", "args", "response", "side", "duration_ms"])


def spans_frame(obj: Any):
    """One row per span: its depth, parent row, start offset from the root, duration, and
    every attribute as a column (named as CES names it: agent, model, name, ...)."""
    import pandas as pd

    cols: dict[str, list] = {c: [] for c in SPAN_COLUMNS}
    attrs: list[dict] = []
    conversation_col, turn_col, index_col, parent_col = cols["conversation"], cols["turn"], cols["index"], cols["parent"]
    depth_col, span_col, kind_col, start_col, duration_col = (cols["depth"], cols["span"], cols["kind"], cols["start_ms"],
                                                              cols["duration_ms"])
    for t in transcripts(obj):
        for turn in t.turns:
            root = turn.root_span
            if root is None:
                continue
            origin = root.start_ns
            # Iterative pre-order walk that remembers each span's parent row.
            row = len(index_col)
            stack: list[tuple[Span, int, int | None]] = [(root, 0, None)]
            while stack:
                span, depth, parent = stack.pop()
                conversation_col.append(t.session)
                turn_col.append(turn.index)
                index_col.append(row)
                parent_col.append(parent)
                depth_col.append(depth)
                span_col.append(span.name)
                kind_col.append(span.kind)
                start_col.append((span.start_ns - origin) / 1e6 if span.start_ns is not None and origin is not None else None)
                duration_col.append(span.duration_ns / 1e6 if span.duration_ns is not None else None)
                attrs.append(span.attributes)
                me = row
                row += 1
                for child in reversed(span.children):
                    stack.append((child, depth + 1, me))
    frame = pd.DataFrame(cols)
    frame["parent"] = frame["parent"].astype("Int64")  # the root has none
    keys: dict[str, None] = {}
    for a in attrs:
        for k in a:
            keys.setdefault(k, None)
    for key in keys:
        column = key if key not in cols else f"attr:{key}"
        frame[column] = [a.get(key) for a in attrs]
    return frame


def latency_summary(frame: Any):
    """p50 / p90 / p99 (and count, mean, max) of span durations in ms, per span kind, per tool
    and per agent. Takes a spans_frame, or anything spans_frame takes."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or "duration_ms" not in frame or "kind" not in frame:
        frame = spans_frame(frame)
    spans = frame[frame["depth"] > 0] if "depth" in frame else frame
    parts = []
    groupings = [("kind", spans, "kind")]
    if "name" in spans:
        tools = spans[spans["kind"] == "Tool"]
        groupings.append(("tool", tools, "name"))
    if "agent" in spans:
        groupings.append(("agent", spans[spans["agent"].notna() & (spans["agent"] != "")], "agent"))
    roots = frame[frame["depth"] == 0] if "depth" in frame else frame.iloc[0:0]
    if len(roots):
        groupings.append(("turn", roots.assign(_all="turn"), "_all"))
    for group, data, column in groupings:
        if not len(data):
            continue
        stats = data.groupby(column)["duration_ms"].agg(
            count="count", mean="mean",
            **{f"p{q}": (lambda s, q=q: s.quantile(q / 100)) for q in PERCENTILES},
            max="max",
        )
        stats.index = pd.MultiIndex.from_tuples([(group, k) for k in stats.index], names=["by", "key"])
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=["count", "mean", *(f"p{q}" for q in PERCENTILES), "max"])
    return pd.concat(parts).round(3)
