"""Frames to a Parquet dataset and back: same columns, values and dtypes; appends; partitions by
conversation date; nested attribute values round-trip; DuckDB reads it in place."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from ces_nb import frames
from ces_nb.model import Transcript
from test_frames_and_plots import transcript

duckdb = pytest.importorskip("duckdb")


def conversation(session: str, day: str, n: int = 2) -> Transcript:
    data = copy.deepcopy(transcript(n=n))
    data["session"] = session
    for turn in data["turns"]:
        stack = [turn["root_span"]]
        while stack:
            span = stack.pop()
            span["start_time"] = span["start_time"].replace("2026-11-22", day)
            span["end_time"] = span["end_time"].replace("2026-11-22", day)
            stack.extend(span.get("child_spans", []))
        tool = turn["root_span"]["child_spans"][1]
        tool["attributes"]["args"] = {"x": 1, "nested": {"list": [1, "two", None]}}  # an object, as the emulator's Tool spans
        tool["attributes"]["tool call id"] = f"{session}-{turn['turn_index']}"
        turn["root_span"]["attributes"]["mixed"] = "text" if turn["turn_index"] == 1 else {"an": "object"}
    return Transcript.from_dict(data)


def same(read: pd.DataFrame, built: pd.DataFrame) -> None:
    read = read.drop(columns="conversation_date")
    assert list(read.columns) == list(built.columns)
    assert dict(read.dtypes) == dict(built.dtypes)
    pd.testing.assert_frame_equal(read, built, check_dtype=True, check_exact=True)


@pytest.mark.parametrize("kind, build", [("spans", frames.spans_frame), ("turns", frames.turns_frame),
                                         ("tool_calls", frames.tool_calls_frame)])
def test_round_trip_per_kind(tmp_path, kind, build):
    t = conversation("c1", "2026-11-22")
    frames.to_parquet(t, tmp_path)
    back = frames.read_parquet(tmp_path, kind)
    same(back, build(t))


def test_nested_values_come_back_as_objects_and_text_stays_text(tmp_path):
    t = conversation("c1", "2026-11-22")
    frames.to_parquet(t, tmp_path)
    spans = frames.read_parquet(tmp_path, "spans")
    assert spans[spans.kind == "Tool"].args.iloc[0] == {"x": 1, "nested": {"list": [1, "two", None]}}
    roots = spans[spans.depth == 0]
    assert list(roots.mixed) == ["text", {"an": "object"}]
    # text columns are plain Parquet strings, so DuckDB compares them directly
    agents = duckdb.sql(f"SELECT DISTINCT agent FROM read_parquet('{tmp_path}/spans/**/*.parquet') WHERE agent IS NOT NULL ORDER BY 1").fetchall()
    assert agents == [("A",), ("B",)]


def test_appends_partition_by_date_and_number_spans_frame_wide(tmp_path):
    first, second = conversation("c1", "2026-11-22"), conversation("c2", "2026-11-23", n=3)
    frames.to_parquet(first, tmp_path)
    frames.to_parquet(second, tmp_path)
    days = sorted(p.name for p in (tmp_path / "spans").iterdir())
    assert days == ["conversation_date=2026-11-22", "conversation_date=2026-11-23"]
    back = frames.read_parquet(tmp_path, "spans")
    assert list(back.conversation_date.unique()) == ["2026-11-22", "2026-11-23"]
    same(back, frames.spans_frame([first, second]))
    assert len(frames.read_parquet(tmp_path, "turns")) == 5
    only = frames.read_parquet(tmp_path, "turns", filters=[("conversation_date", "=", "2026-11-23")])
    assert set(only.conversation) == {"c2"} and len(only) == 3


def test_saved_json_and_one_kind_only(tmp_path):
    data = transcript(n=2)
    frames.to_parquet(data, tmp_path / "ds", kinds=["spans"])
    assert not (tmp_path / "ds" / "turns").exists()
    same(frames.read_parquet(tmp_path / "ds", "spans"), frames.spans_frame(data))


def test_duckdb_queries_the_dataset_in_place(tmp_path):
    t = conversation("c1", "2026-11-22", n=4)
    frames.to_parquet(t, tmp_path)
    got = duckdb.sql(f"""SELECT kind, count(*) AS spans, median(duration_ms) AS p50
                         FROM read_parquet('{tmp_path}/spans/**/*.parquet', hive_partitioning = true)
                         WHERE conversation_date = '2026-11-22' AND depth > 0 GROUP BY kind ORDER BY kind""").df()
    spans = frames.spans_frame(t)
    expected = spans[spans.depth > 0].groupby("kind").duration_ms.agg(["count", "median"]).reset_index()
    assert list(got.kind) == list(expected.kind)
    assert list(got.spans) == list(expected["count"]) and list(got.p50) == list(expected["median"])
    # nested values are JSON text to DuckDB
    x = duckdb.sql(f"SELECT DISTINCT json_extract(args, '$.x')::INT FROM read_parquet('{tmp_path}/spans/**/*.parquet') "
                   "WHERE kind = 'Tool'").fetchall()
    assert x == [(1,)]


def test_unknown_kinds_and_missing_datasets_say_so(tmp_path):
    with pytest.raises(ValueError, match="unknown frame kind"):
        frames.to_parquet(transcript(), tmp_path, kinds=["span"])
    with pytest.raises(FileNotFoundError, match="to_parquet"):
        frames.read_parquet(tmp_path / "nothing", "spans")
