"""spans_frame straight from JSON (saved transcripts, Conversation exports, files) is the frame
from the records, column by column and dtype by dtype; and the fast RFC 3339 reading is protobuf's."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ces_nb import frames
from ces_nb.model import Transcript, _duration_ns, timestamp_ns
from test_frames_and_plots import span_json, transcript


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert list(a.dtypes) == list(b.dtypes)
    pd.testing.assert_frame_equal(a, b, check_dtype=True, check_exact=True)


def conversation() -> dict:
    """A Conversation export: no format, a name, turns holding messages and a root_span (camelCase)."""
    return {"name": "projects/p/locations/us/apps/a/conversations/c1", "startTime": "2026-11-22T10:00:00Z",
            "turns": [{"messages": [{"role": "user", "chunks": [{"text": f"q{i}"}]},
                                    {"role": "agent", "chunks": [{"text": f"a{i}"}]}],
                       "rootSpan": span_json(camel=True)} for i in range(3)]}


def in_outputs() -> dict:
    """The root span inside an output's diagnostic_info, a turn index only on the outputs, and a
    duration given as text with no end time."""
    t = transcript(n=3)
    for turn in t["turns"]:
        root = turn.pop("root_span")
        root["child_spans"][0]["duration"] = "0.030000001s"
        del root["child_spans"][0]["end_time"]
        del turn["turn_index"]
        turn["outputs"].append({"diagnostic_info": {"root_span": root}, "turn_completed": True, "turn_index": 7})
    return t


CASES = {
    "transcript": lambda: transcript(n=4),
    "camel": lambda: transcript(camel=True, n=2),
    "conversation": conversation,
    "in outputs": in_outputs,
    "no spans": lambda: {"format": "ces_nb.transcript", "version": 1, "session": "s", "turns": [{"outputs": [{"text": "x"}]}]},
}


@pytest.mark.parametrize("case", list(CASES))
def test_json_frame_is_the_records_frame(case):
    data = CASES[case]()
    same(frames.spans_frame(copy.deepcopy(data)), frames.spans_frame(Transcript.from_dict(copy.deepcopy(data))))


def test_direct_path_builds_no_records(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("built records")

    expected = frames.spans_frame(Transcript.from_dict(transcript(n=3)))
    monkeypatch.setattr(Transcript, "from_dict", classmethod(refuse))
    monkeypatch.setattr(Transcript, "load", classmethod(refuse))
    same(frames.spans_frame([transcript(n=3)]), expected)
    same(frames.spans_frame(conversation()), frames.spans_frame(conversation()))


def test_files_and_lists_of_them(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(transcript(n=2)))
    b.write_text(json.dumps(conversation()))
    expected = frames.spans_frame([Transcript.from_dict(transcript(n=2)), Transcript.from_dict(conversation())])
    same(frames.spans_frame([a, str(b)]), expected)
    assert set(frames.spans_frame([a, b]).conversation) == {"s1", "projects/p/locations/us/apps/a/conversations/c1"}
    # the other frames take files too, through the records
    assert len(frames.turns_frame(a)) == 2


def broken(kind: str) -> dict:
    t = transcript(n=3)
    second = t["turns"][1]["root_span"]
    if kind == "bad time":
        second["child_spans"][1]["start_time"] = "yesterday"  # that span and its children are left out
    elif kind == "bad children":
        second["child_spans"] = "none"
    elif kind == "bad attributes":
        second["child_spans"][2]["attributes"] = ["a"]
    elif kind == "bad output":  # an output the records refuse takes its diagnostic_info with it
        t["turns"][2]["outputs"].append({"audio": "not base64!", "diagnostic_info": {"root_span": {**span_json(), "name": "dropped"}}})
    elif kind == "bad turn":
        t["turns"].insert(1, "not a turn")
    elif kind == "bool index":
        t["turns"][0]["turn_index"] = True
    return t


@pytest.mark.parametrize("kind", ["bad time", "bad children", "bad attributes", "bad output", "bad turn", "bool index"])
def test_json_the_records_would_check_gives_the_records_frame(kind):
    data = broken(kind)
    same(frames.spans_frame(copy.deepcopy(data)), frames.spans_frame(Transcript.from_dict(copy.deepcopy(data))))


def _protobuf_timestamp(text: str) -> int:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)
    return ts.ToNanoseconds()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-62135596800 * 10**9, max_value=253402300799 * 10**9 + 999_999_999))
def test_fast_timestamps_read_what_protobuf_writes(ns):
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    text = ts.ToJsonString()
    assert timestamp_ns(text) == _protobuf_timestamp(text) == ns


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z"))
def test_fast_timestamps_agree_with_protobuf_or_both_refuse(text):
    try:
        expected = _protobuf_timestamp(text)
    except ValueError:
        with pytest.raises(ValueError):
            timestamp_ns(text)
        return
    assert timestamp_ns(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**20))
def test_fast_durations_read_what_protobuf_writes(ns):
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    try:
        d.FromNanoseconds(ns)
        text = d.ToJsonString()
    except ValueError:
        return
    assert _duration_ns(text) == ns
