"""Turns, outputs, tool calls and spans as pandas DataFrames, plus latency percentiles.

Every function takes what you have: a Turn, a Transcript, a Session, a list of
any of those, or their JSON (snake_case or camelCase, e.g. a saved transcript or
a Conversation dump), as dicts or as files. Conversations are named by `Transcript.session`.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from . import span_json
from .text_columns import as_pandas_reads
from .model import AudioOutput, CitationsOutput, Output, SearchSuggestionsOutput, Span, ToolCallsOutput, Transcript, Turn, json_value
from .model import read_json_file
from .render.text import integral

SPAN_COLUMNS = ["conversation", "turn", "index", "parent", "depth", "span", "kind", "start_ms", "duration_ms"]
PERCENTILES = (50, 90, 99)


def transcripts(obj: Any) -> list[Transcript]:
    """Normalize anything turn-shaped into transcripts."""
    if obj is None:
        return []
    if isinstance(obj, (str, os.PathLike)):  # a saved transcript or a Conversation export, as a file
        return [Transcript.load(obj)]
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
    every attribute as a column (named as CES names it: agent, model, name, ...).

    Saved transcripts and Conversation exports (JSON dicts, files, lists of them) are read
    straight into rows, with no Turn built; the frame is the same as from their records."""
    with _gc_paused():
        return _spans_frame(obj)


def _spans_frame(obj: Any):
    import pandas as pd

    parts = list(_span_trees(obj))
    attrs: list[dict] = []
    frame = None
    if parts and all(isinstance(trees, span_json.JsonSpans) for trees in parts):  # all JSON: columns as arrays
        frame = span_json.frame(parts)
        if frame is not None:
            for trees in parts:
                attrs += trees.attributes
    if frame is None:
        cols: dict[str, list] = {c: [] for c in SPAN_COLUMNS}
        for trees in parts:
            if isinstance(trees, span_json.JsonSpans):
                trees.rows(cols, attrs)
            else:
                conversation, roots = trees
                for index, root in roots:
                    _span_rows(conversation, index, root, cols, attrs)
        frame = pd.DataFrame({c: as_pandas_reads(v) if c in _TEXT_COLUMNS else v for c, v in cols.items()})
        frame["parent"] = frame["parent"].astype("Int64")  # the root has none
    extra = {(key if key not in SPAN_COLUMNS else f"attr:{key}"): as_pandas_reads(values)
             for key, values in _attribute_columns(attrs).items()}
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1)
    return frame


_TEXT_COLUMNS = ("conversation", "span", "kind")


def _attribute_columns(attrs: list) -> dict[str, list]:
    """Every attribute name, in the order first met, and its column: the values, None where a span
    has it not. One pass visits each span's attributes once; a pass per name, though in C (map
    over dict.get), visits each dict once per name, a cache miss each time on a million dicts
    spread over a parsed file's heap (0.8-1.0 s, against 0.3-0.4 s)."""
    n = len(attrs)
    columns: dict[str, list] = {}
    for row, attributes in enumerate(attrs):
        for key, value in attributes.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = [None] * n
            column[row] = value
    return columns


def _span_rows(conversation: str, turn: int, root: Span, cols: dict[str, list], attrs: list[dict]) -> None:
    origin = root.start_ns
    row = len(cols["index"])
    # Iterative pre-order walk that remembers each span's parent row.
    stack: list[tuple[Span, int, int | None]] = [(root, 0, None)]
    while stack:
        span, depth, parent = stack.pop()
        _append(cols, conversation, turn, row, parent, depth, span.name, span.kind, span.start_ns, span.duration_ns, origin)
        attrs.append(span.attributes)
        me = row
        row += 1
        for child in reversed(span.children):
            stack.append((child, depth + 1, me))


def _append(cols, conversation, turn, row, parent, depth, name, kind, start_ns, duration_ns, origin) -> None:
    cols["conversation"].append(conversation)
    cols["turn"].append(turn)
    cols["index"].append(row)
    cols["parent"].append(parent)
    cols["depth"].append(depth)
    cols["span"].append(name)
    cols["kind"].append(kind)
    cols["start_ms"].append((start_ns - origin) / 1e6 if start_ns is not None and origin is not None else None)
    cols["duration_ms"].append(duration_ns / 1e6 if duration_ns is not None else None)


def _span_trees(obj: Any) -> Iterator["tuple[str, list[tuple[int, Span]]] | span_json.JsonSpans"]:
    """For each transcript in obj: its span trees read from JSON, or (conversation, [(turn index,
    root span)]) from its records. JSON in the saved-transcript or Conversation layout is read
    without building records; JSON in any other shape, or with a value the records would check,
    goes through `transcripts`."""
    if isinstance(obj, (str, os.PathLike)):
        # Read, not mapped: another program rewriting a mapped file mid-read kills the kernel (SIGBUS).
        data = Path(obj).read_bytes()
        typed = span_json.decode(data)
        if typed is not None and span_json.is_layout(typed):
            try:
                yield span_json.read(typed)
                return
            except span_json.NotPlain:
                pass  # the dicts decide: they may still be plain (a root in an output beside others)
        obj = read_json_file(obj, data)
    if isinstance(obj, dict) and span_json.is_layout(obj):
        try:
            yield span_json.read(obj)
            return
        except span_json.NotPlain:
            pass
    elif isinstance(obj, list) and obj and all(isinstance(x, (dict, str, os.PathLike)) and (not isinstance(x, dict) or span_json.is_layout(x))
                                               for x in obj):
        for item in obj:
            yield from _span_trees(item)
        return
    for t in transcripts(obj):
        yield t.session, [(turn.index, turn.root_span) for turn in t.turns if turn.root_span is not None]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off while a frame is built: parsing a saved transcript makes a few million
    dicts and lists, and each GC pass they set off rescans every one of them (and all the
    session's records) to find no cycle, since JSON has none: over half the parse time. Back on
    once the parse is freed, the first pass has only the attribute values the frame keeps to scan."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_parquet(obj: Any, path, kinds=("turns", "spans", "tool_calls")):
    """Append the turns, spans and tool-call frames of `obj` to a Parquet dataset at `path`,
    partitioned by conversation date (see ces_nb.parquet). Returns the dataset folder."""
    from .parquet import check_kinds, to_parquet

    check_kinds(kinds)
    return to_parquet(transcripts(obj), path, kinds,
                      {"turns": turns_frame, "spans": spans_frame, "tool_calls": tool_calls_frame})


def read_parquet(path, kind: str = "spans", filters: Any = None):
    """One frame kind ("turns", "spans", "tool_calls") of a dataset written by `to_parquet`."""
    from .parquet import read_parquet

    return read_parquet(path, kind, filters)


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
