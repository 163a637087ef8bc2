"""Frames as a Parquet dataset: a long history written once per batch, read back with one call,
and queried in place by DuckDB (or anything that reads Parquet).

    frames.to_parquet(transcripts, "history")           # appends; returns the dataset folder
    frames.read_parquet("history", kind="spans")        # the spans frame of everything written
    duckdb.sql("SELECT ... FROM read_parquet('history/spans/**/*.parquet', hive_partitioning=true)")

Layout, hive-partitioned by the conversation's UTC date (its first span's start):

    history/turns/conversation_date=2026-11-22/part-<time>-<n>.parquet
    history/spans/conversation_date=2026-11-22/...
    history/tool_calls/conversation_date=2026-11-22/...

Each call writes new files, so appending never rewrites what is there. Values that Parquet
columns cannot hold as they are (span attributes holding objects, lists, or a mix of types) are
stored as JSON text; the file's metadata names those columns, and `read_parquet` decodes them.
In the spans files `index` and `parent` count from the turn's root (root = 0), so appended
batches never collide; `read_parquet` numbers the rows frame-wide again, as `spans_frame` does.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KINDS = ("turns", "spans", "tool_calls")
PARTITION = "conversation_date"
UNKNOWN_DATE = "unknown"
_META = b"ces_nb"


def check_kinds(kinds) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown frame kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")


def to_parquet(records: list, path: str | os.PathLike, kinds: tuple[str, ...] | list[str], build: dict) -> Path:
    """Append the frames of `records` (Transcripts) to the dataset at `path`, one sub-folder per
    kind ("turns", "spans", "tool_calls"), partitioned by conversation date. `build`: kind -> the
    frames function that builds it (`frames.to_parquet` passes its own, so this module needs
    no import of frames)."""
    check_kinds(kinds)
    dates: dict[str, str] = {}
    for t in records:
        dates.setdefault(t.session, _conversation_date(t))
    root = Path(path).expanduser()
    stamp = f"{time.time_ns():020d}-{os.getpid()}"
    for kind in kinds:
        frame = build[kind](records)
        if kind == "spans":
            frame = _turn_relative(frame)
        frame[PARTITION] = frame["conversation"].map(dates).fillna(UNKNOWN_DATE).astype(str) if len(frame) else []
        _write(frame, root / kind, kind, stamp)
    return root


def read_parquet(path: str | os.PathLike, kind: str = "spans", filters: Any = None):
    """One frame kind of the dataset at `path`, as the frames module builds it, plus its
    `conversation_date`. `filters` go to pyarrow (e.g. [("conversation_date", ">=", "2026-11-01")])."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}; choose from {', '.join(KINDS)}")
    folder = Path(path).expanduser() / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"no {kind} in {Path(path)}: write some with frames.to_parquet(obj, {str(path)!r})")
    dataset = ds.dataset(folder, format="parquet", partitioning=_partitioning())
    expression = _filter(filters)
    parts = []
    # Each file on its own schema (batches differ in their attribute columns), in write order:
    # file names start with the time they were written.
    for fragment in sorted(dataset.get_fragments(filter=expression), key=lambda f: f.path):
        table = pq.read_table(fragment.path)
        date = Path(fragment.path).parent.name.partition("=")[2]
        table = table.append_column(PARTITION, pa.array([date] * table.num_rows, pa.string()))
        if expression is not None:
            table = table.filter(expression)
        meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
        frame = table.to_pandas()
        for column in meta.get("json_columns", []):
            frame[column] = pd.Series([json.loads(v) if isinstance(v, str) else None for v in frame[column]], dtype=object, index=frame.index)
        parts.append(frame)
    if not parts:
        raise FileNotFoundError(f"no {kind} rows in {Path(path)}" + (f" matching {filters}" if filters is not None else ""))
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if kind == "spans" and len(frame):
        frame = _frame_wide(frame)
    return frame


def _partitioning():
    import pyarrow as pa
    import pyarrow.dataset as ds

    return ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")


def _filter(filters: Any):
    if filters is None:
        return None
    import pyarrow.parquet as pq

    return pq.filters_to_expression(filters)


def _conversation_date(t) -> str:
    starts = [turn.root_span.start_ns for turn in t.turns if turn.root_span is not None and turn.root_span.start_ns is not None]
    if starts:
        return datetime.fromtimestamp(min(starts) / 1e9, tz=timezone.utc).date().isoformat()
    start = t.metadata.get("start_time") if isinstance(t.metadata, dict) else None
    if start:
        from .model import timestamp_ns

        try:
            return datetime.fromtimestamp(timestamp_ns(start) / 1e9, tz=timezone.utc).date().isoformat()
        except (TypeError, ValueError):
            pass
    return UNKNOWN_DATE


def _turn_relative(frame):
    root = frame["index"].where(frame["depth"] == 0).ffill().astype("int64")
    frame = frame.copy()
    frame["index"] = frame["index"] - root
    frame["parent"] = frame["parent"] - root
    return frame


def _frame_wide(frame):
    import numpy as np

    position = np.arange(len(frame))
    root = position - frame["index"].to_numpy()
    frame["index"] = position
    frame["parent"] = (frame["parent"] + root).astype("Int64")
    return frame


def _storable(values) -> bool:
    """Whether an object column's values go into Parquet as they are: all text, or all booleans."""
    kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and v != v)}
    return kinds <= {str} or kinds <= {bool}


def _write(frame, folder: Path, kind: str, stamp: str) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds

    frame = frame.copy()
    encoded = []
    for column in frame.columns:
        if column != PARTITION and frame[column].dtype == object and not _storable(frame[column]):
            frame[column] = [None if v is None else json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)
                             for v in frame[column]]
            encoded.append(column)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META] = json.dumps({"kind": kind, "json_columns": encoded}).encode()
    table = table.replace_schema_metadata(meta)
    folder.mkdir(parents=True, exist_ok=True)
    ds.write_dataset(table, folder, format="parquet", partitioning=_partitioning(), basename_template=f"part-{stamp}-{{i}}.parquet",
                     existing_data_behavior="overwrite_or_ignore")
