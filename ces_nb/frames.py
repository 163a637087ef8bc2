"""Turns, outputs, tool calls and spans as pandas DataFrames, plus latency percentiles.

Every function takes what you have: a Turn, a Transcript, a Session, a list of
any of those, or their JSON (snake_case or camelCase, e.g. a saved transcript or
a Conversation dump), as dicts or as files. Conversations are named by `Transcript.session`.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .model import _SPAN_KIND_BY_WORD, _At, _check_output, get_field, has_field
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

    cols: dict[str, list] = {c: [] for c in SPAN_COLUMNS}
    attrs: list[dict] = []
    for conversation, trees in _span_trees(obj):
        if isinstance(trees, _JsonSpans):
            trees.rows(conversation, cols, attrs)
        else:
            for index, root in trees:
                _span_rows(conversation, index, root, cols, attrs)
    frame = pd.DataFrame(cols)
    frame["parent"] = frame["parent"].astype("Int64")  # the root has none
    keys: dict[str, None] = {}
    for a in attrs:
        for k in a:
            keys.setdefault(k, None)
    extra = {(key if key not in cols else f"attr:{key}"): [a.get(key) for a in attrs] for key in keys}
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1)
    return frame


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


class _NotPlain(Exception):
    """JSON the direct path does not read as it stands: the records (with their checks and
    load_errors) decide what it holds."""


_MISSING = object()



class _JsonSpans:
    """One transcript's span trees read from JSON into spans_frame's rows.

    The trees are read a level at a time across all of them (every root, then every child of a
    root, ...), a column at a time with list comprehensions, and the times a column at a time by
    time_columns: no Python step per span. The rows are then put in pre-order, as the records
    walk them."""

    def __init__(self) -> None:
        self.turn_of_tree: list[int] = []
        self.trees: list[Any] = []

    def add(self, turn: int, raw: Any) -> None:
        self.turn_of_tree.append(turn)
        self.trees.append(raw)

    def read(self) -> None:
        """Read the trees as Span.from_dict reads well-formed JSON (else _NotPlain)."""
        import numpy as np

        from .time_columns import durations_ns, timestamps_ns

        names: list[str] = []
        attributes: list[dict] = []
        starts: list[Any] = []
        ends: list[Any] = []
        durations: list[Any] = []
        # Per level, in breadth-first order: the parent (its breadth-first number) and tree of each span.
        parents = [np.full(len(self.trees), -1, dtype=np.intp)]
        tree_of = [np.arange(len(self.trees), dtype=np.intp)]
        level = self.trees
        while level:
            if set(map(type, level)) != {dict}:
                raise _NotPlain
            level_names = [d.get("name", "") for d in level]
            level_attributes = [d.get("attributes") for d in level]
            children = [d["child_spans"] if "child_spans" in d else d.get("childSpans") for d in level]
            if (set(map(type, level_names)) != {str} or not set(map(type, level_attributes)) <= {dict, type(None)}
                    or not set(map(type, children)) <= {list, type(None)}):
                raise _NotPlain
            first = len(names)
            names += level_names
            attributes += [a if a is not None else {} for a in level_attributes]
            starts += [d["start_time"] if "start_time" in d else d.get("startTime") for d in level]
            ends += [d["end_time"] if "end_time" in d else d.get("endTime") for d in level]
            durations += [d.get("duration") for d in level]
            counts = np.array([len(c) if c else 0 for c in children], dtype=np.intp)
            level = [child for c in children if c for child in c]
            if level:
                parents.append(np.repeat(np.arange(first, first + len(counts), dtype=np.intp), counts))
                tree_of.append(np.repeat(tree_of[-1], counts))
        depth = np.repeat(np.arange(len(parents)), [len(p) for p in parents])
        parent, tree = np.concatenate(parents), np.concatenate(tree_of)
        order = _preorder(parent, [len(p) for p in parents])

        try:
            start, no_start = timestamps_ns(starts)
            end, no_end = timestamps_ns(ends)
            duration, no_duration = durations_ns(durations)
        except Exception:  # a time the records refuse: they leave its span out, and say so
            raise _NotPlain from None
        # Span.from_dict: the duration given, else end - start.
        measured = no_duration & ~no_start & ~no_end
        if measured.any():
            duration = np.where(measured, end - start, duration)
            no_duration = no_duration & ~measured
        # The roots are the first spans breadth-first, so a span's tree number is its root's.
        start_ms, no_start_ms = (start - start[tree]) / 1e6, no_start | no_start[tree]

        row = np.empty_like(order)
        row[order] = np.arange(len(order))
        self.turns = np.asarray(self.turn_of_tree, dtype=object)[tree[order]].tolist() if len(order) else []
        parent_row = np.where(parent >= 0, row[parent], -1)[order]
        self.parents = [None if p < 0 else p for p in parent_row.tolist()]
        self.depths = depth[order].tolist()
        self.names = _reordered(names, order)
        self.attributes = _reordered(attributes, order)
        self.start_ms = _with_none(start_ms[order].tolist(), no_start_ms[order])
        self.duration_ms = _with_none((duration / 1e6)[order].tolist(), no_duration[order])

    def rows(self, conversation: str, cols: dict[str, list], attrs: list[dict]) -> None:
        """Append the rows (after read) to spans_frame's columns."""
        base = len(cols["index"])
        n = len(self.names)
        cols["conversation"].extend([conversation] * n)
        cols["turn"].extend(self.turns)
        cols["index"].extend(range(base, base + n))
        cols["parent"].extend(self.parents if not base else [None if p is None else base + p for p in self.parents])
        cols["depth"].extend(self.depths)
        cols["span"].extend(self.names)
        kinds = {name: _kind(name) for name in set(self.names)}
        cols["kind"].extend(map(kinds.__getitem__, self.names))
        cols["start_ms"].extend(self.start_ms)
        cols["duration_ms"].extend(self.duration_ms)
        attrs.extend(self.attributes)


def _preorder(parent, level_sizes: list[int]):
    """The breadth-first numbers of a forest's nodes in pre-order, given each node's parent (-1 for
    a root) in breadth-first order, siblings in order, and how many nodes each level holds."""
    import numpy as np

    n = len(parent)
    size = np.ones(n, dtype=np.intp)  # subtree sizes, the deepest level first
    ends = np.cumsum(level_sizes)
    for lo, hi in zip(ends[:0:-1] - level_sizes[:0:-1], ends[:0:-1]):
        np.add.at(size, parent[lo:hi], size[lo:hi])
    position = np.empty(n, dtype=np.intp)
    lo = 0
    for count in level_sizes:
        hi = lo + count
        s = size[lo:hi]
        before = np.cumsum(s) - s  # the nodes of earlier siblings' subtrees (and earlier groups')
        p = parent[lo:hi]
        if lo == 0:
            position[lo:hi] = before
        else:
            # Siblings are contiguous: subtract what the group's earlier members of this level hold.
            group_start = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
            group_before = np.repeat(before[group_start], np.diff(np.r_[group_start, count]))
            position[lo:hi] = position[p] + 1 + before - group_before
        lo = hi
    order = np.empty(n, dtype=np.intp)
    order[position] = np.arange(n)
    return order


def _reordered(values: list, order) -> list:
    import numpy as np

    box = np.empty(len(values), dtype=object)
    box[:] = values
    return box[order].tolist()


def _with_none(values: list, missing) -> list:
    """values (floats, as the records path divides) with None where missing."""
    import numpy as np

    for i in np.flatnonzero(missing).tolist():
        values[i] = None
    return values


def _kind(name: str) -> str:
    return _SPAN_KIND_BY_WORD.get(name.split(" ", 1)[0].lower(), name)  # as Span.kind


def _span_trees(obj: Any) -> Iterator[tuple[str, "list[tuple[int, Span]] | _JsonSpans"]]:
    """(conversation, [(turn index, root span)] or the rows read from its JSON) for each transcript in obj. JSON in
    the saved-transcript or Conversation layout is read without building records; JSON in any
    other shape, or with a value the records would check, goes through `transcripts`."""
    if isinstance(obj, (str, os.PathLike)):
        obj = read_json_file(obj)
    if isinstance(obj, dict) and ("turns" in obj or "format" in obj):
        try:
            yield _json_trees(obj)
            return
        except _NotPlain:
            pass
    elif isinstance(obj, list) and obj and all(isinstance(x, (dict, str, os.PathLike)) and (not isinstance(x, dict) or "turns" in x or "format" in x)
                                               for x in obj):
        for item in obj:
            yield from _span_trees(item)
        return
    for t in transcripts(obj):
        yield t.session, [(turn.index, turn.root_span) for turn in t.turns if turn.root_span is not None]


def _json_trees(d: dict) -> tuple[str, _JsonSpans]:
    session, out = _json_turns(d)
    out.read()
    return session, out


def _json_turns(d: dict) -> tuple[str, _JsonSpans]:
    from .model import FORMAT

    raw_turns = get_field(d, "turns")
    if not (raw_turns is None or type(raw_turns) is list):
        raise _NotPlain
    out = _JsonSpans()
    if get_field(d, "format") != FORMAT:  # a Conversation
        if not has_field(d, "turns") or not isinstance(get_field(d, "name", ""), str):
            raise _NotPlain
        for i, raw in enumerate(raw_turns or []):
            if type(raw) is not dict:
                raise _NotPlain
            root = get_field(raw, "root_span")
            if root:
                out.add(i + 1, root)
        return get_field(d, "name") or "", out
    version, session = get_field(d, "version", 1), get_field(d, "session")
    if type(version) is not int or version > 1 or not (session is None or type(session) is str):
        raise _NotPlain
    for raw in raw_turns or []:
        if type(raw) is not dict or not has_field(raw, "outputs") and has_field(raw, "messages"):
            raise _NotPlain  # a Conversation.Turn inside a transcript: the records know
        index, root = 0, None
        outputs = get_field(raw, "outputs")
        if not (outputs is None or type(outputs) is list):
            raise _NotPlain
        for output in outputs or []:
            if type(output) is not dict:
                raise _NotPlain
            try:  # an output the records refuse takes its diagnostics with it
                _check_output(output, _At(None, "output"))
            except Exception:
                raise _NotPlain from None
            at = get_field(output, "turn_index", 0)
            if type(at) is not int:
                raise _NotPlain
            index = at or index
            info = get_field(output, "diagnostic_info")
            if info is not None:
                if type(info) is not dict:
                    raise _NotPlain
                root = get_field(info, "root_span") or root
        if has_field(raw, "turn_index"):
            at = get_field(raw, "turn_index")
            if not (at is None or type(at) is int):
                raise _NotPlain
            index = at or 0
        if root is None:
            root = get_field(raw, "root_span") or None
        if root is not None:
            out.add(index, root)
    return session or "", out


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
