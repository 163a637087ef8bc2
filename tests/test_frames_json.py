"""spans_frame straight from JSON (saved transcripts, Conversation exports, files) is the frame
from the records, column by column and dtype by dtype; and the fast RFC 3339 reading is protobuf's."""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ces_nb import frames
from ces_nb.model import Transcript, _duration_ns, read_json_file, timestamp_ns
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
    elif kind == "bad duration":  # in the last level, a level of leaves
        second["child_spans"][2]["child_spans"][0]["duration"] = "5 ms"
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


@pytest.mark.parametrize("kind", ["bad time", "bad duration", "bad children", "bad attributes", "bad output", "bad turn", "bool index"])
def test_json_the_records_would_check_gives_the_records_frame(kind):
    data = broken(kind)
    same(frames.spans_frame(copy.deepcopy(data)), frames.spans_frame(Transcript.from_dict(copy.deepcopy(data))))


# -- files: decoded into msgspec structs (ces_nb.span_json), or into dicts where those do not fit ----


def _file_frame(tmp_path, data, name="t.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return frames.spans_frame(path), frames.spans_frame(Transcript.load(path))


@pytest.mark.parametrize("case", list(CASES))
def test_file_frame_is_the_records_frame(tmp_path, case):
    got, expected = _file_frame(tmp_path, CASES[case]())
    same(got, expected)


@pytest.mark.parametrize("kind", ["bad time", "bad duration", "bad children", "bad attributes", "bad output", "bad turn", "bool index"])
def test_files_the_records_would_check_give_the_records_frame(tmp_path, kind):
    got, expected = _file_frame(tmp_path, broken(kind))
    same(got, expected)


def odd(kind: str) -> dict:
    """Files the typed structs do not fit, though the dicts read them: each still gives the records' frame."""
    t = transcript(n=3)
    first, second = t["turns"][0]["root_span"], t["turns"][1]["root_span"]
    if kind == "unknown span key":
        second["child_spans"][0]["span_id"] = "abc"
    elif kind == "snake and camel":
        t["turns"][2]["root_span"] = copy.deepcopy(span_json(camel=True))
    elif kind == "both spellings":  # the snake key wins, as get_field has it
        second["startTime"] = "2026-11-22T09:00:00Z"
    elif kind == "a root in an output beside others":
        root = t["turns"][1].pop("root_span")
        t["turns"][1]["outputs"].append({"diagnostic_info": {"root_span": root}, "turn_index": 2})
    elif kind == "empty and null roots":
        t["turns"][0]["root_span"] = {}
        t["turns"][1]["root_span"] = None
    elif kind == "a root of nulls":  # truthy as a dict: a span with no name and no times
        t["turns"][0]["root_span"] = {"start_time": None, "attributes": None}
    elif kind == "children of {}":
        first["child_spans"].append({})
    elif kind == "a name of null":
        first["child_spans"][1]["name"] = None
    elif kind == "integer times":
        first["child_spans"][1]["start_time"] = 5
    elif kind == "a turn number past int64":
        t["turns"][2]["turn_index"] = 2**70
    return t


ODD = ["unknown span key", "snake and camel", "both spellings", "a root in an output beside others", "empty and null roots",
       "a root of nulls", "children of {}", "a name of null", "integer times", "a turn number past int64"]


@pytest.mark.parametrize("kind", ODD)
def test_files_the_typed_reading_does_not_fit_give_the_records_frame(tmp_path, kind):
    data = odd(kind)
    got, expected = _file_frame(tmp_path, data)
    same(got, expected)
    same(got, frames.spans_frame(copy.deepcopy(data)))  # and the frame of the same JSON as dicts


def test_a_saved_file_is_read_typed_and_builds_no_records_nor_dicts(tmp_path, monkeypatch):
    """The fast path is the one taken: no Turn built, and the file never decoded into dicts."""
    path = tmp_path / "t.json"
    Transcript.from_dict(transcript(n=3)).save(path)
    export = tmp_path / "c.json"
    export.write_text(json.dumps(conversation()))
    expected = frames.spans_frame([Transcript.load(path), Transcript.load(export)])

    def refuse(*args, **kwargs):
        raise AssertionError("took the slow path")

    monkeypatch.setattr(Transcript, "from_dict", classmethod(refuse))
    monkeypatch.setattr(Transcript, "load", classmethod(refuse))
    monkeypatch.setattr(frames, "read_json_file", refuse)
    same(frames.spans_frame([path, export]), expected)


def test_text_times_are_known_as_text_and_other_times_still_decode_typed(tmp_path):
    """Children whose times are all text (as every saved transcript and export writes them)
    decode into the structs that say so, and their time columns are parsed unchecked; a file
    with a time of another type decodes into the structs that take any time, and its column is
    checked value by value: both give the records' frame (the odd files above check that)."""
    from ces_nb import span_json as spans

    path = tmp_path / "t.json"
    Transcript.from_dict(transcript(n=3)).save(path)
    typed = spans.decode(path.read_bytes())
    assert {type(c).__name__ for t in typed.turns for c in t.root_span.child_spans} == {"_TextSnakeChild"}
    odd_path = tmp_path / "odd.json"
    odd_path.write_text(json.dumps(odd("integer times")))
    odd_typed = spans.decode(odd_path.read_bytes())
    assert odd_typed is not None  # typed, not dicts
    assert {type(c).__name__ for t in odd_typed.turns if t.root_span for c in t.root_span.child_spans or []} == {"_SnakeChild"}


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


# -- times a column at a time (ces_nb.time_columns), against the per-value readers -----------------

from ces_nb import time_columns  # noqa: E402


def _per_value(values, one):
    """What time_columns must give: one(v) per value, None as missing; or one's error."""
    out = [one(v) for v in values]
    return [0 if v is None else v for v in out], [v is None for v in out]


def _check_column(values, column, one):
    try:
        expected = _per_value(values, one)
    except Exception as exc:
        with pytest.raises(type(exc)):
            column(values)
        return
    ns, missing = column(values)
    assert ns.tolist() == expected[0] and missing.tolist() == expected[1]


def _timestamp_text(ns: int) -> str:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts.ToJsonString()


TIMESTAMP_VALUES = st.one_of(
    st.integers(min_value=-62135596800 * 10**9, max_value=253402300799 * 10**9 + 999_999_999).map(_timestamp_text),
    st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z"),  # days the month lacks, offsets
    st.sampled_from([None, "", "2026-11-22T10:00:00Z", "2026-11-22T10:00:00.5Z", "2026-11-22T12:00:00+02:00",
                     "2026-11-22T10:00:00.123456789Z", "2026-11-22 10:00:00Z", "2026-11-22", {"seconds": 5, "nanos": 7}]),
)


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "per value"])
@settings(max_examples=150, deadline=None)
@given(values=st.lists(TIMESTAMP_VALUES, max_size=12))
def test_timestamp_columns_are_timestamp_ns_per_value(arrow, values):
    with arrow_or_not(arrow):
        _check_column(values, time_columns.timestamps_ns, timestamp_ns)


DURATION_VALUES = st.one_of(
    st.from_regex(r"\A-?\d{1,12}(\.\d{1,10})?s\Z"),
    st.integers(min_value=0, max_value=10**18).map(lambda ns: f"{ns // 10**9}.{ns % 10**9:09d}s"),
    st.sampled_from([None, "", "0s", "0.030000001s", "8s", "1.5", "s", "1.s", {"seconds": 1, "nanos": 2}, 2, "١s"]),
)


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "per value"])
@settings(max_examples=150, deadline=None)
@given(values=st.lists(DURATION_VALUES, max_size=12))
def test_duration_columns_are_duration_ns_per_value(arrow, values):
    with arrow_or_not(arrow):
        _check_column(values, time_columns.durations_ns, _duration_ns)


@contextmanager
def arrow_or_not(arrow: bool):
    """arrow=False: time_columns as without pyarrow installed (every value read one by one)."""
    original = time_columns._strings
    if not arrow:
        time_columns._strings = lambda values, texts: None
    try:
        yield
    finally:
        time_columns._strings = original


def test_years_past_datetime64_keep_their_nanoseconds():
    ns, missing = time_columns.timestamps_ns(["9999-12-31T23:59:59.999999999Z", "2026-11-22T10:00:00Z", "0001-01-01T00:00:00Z"])
    assert ns.tolist() == [253402300799999999999, 1795341600000000000, -62135596800000000000] and not missing.any()


# -- frames from JSON with the shapes the column readers see -----------------------------------------

def _tree(draw, depth: int, at_ms: int) -> dict:
    span = {"name": draw(st.sampled_from(["LLM", "Tool", "Callback", "root", "guardrail check"])),
            "start_time": draw(st.sampled_from([f"2026-11-22T10:00:00.{at_ms:03d}Z", f"2026-11-22T10:00:{at_ms % 60:02d}Z",
                                                f"2026-11-22T12:00:00.{at_ms:03d}+02:00", None]))}
    ending = draw(st.sampled_from(["end", "duration", "both", "none"]))
    if ending in ("end", "both"):
        span["end_time"] = f"2026-11-22T10:00:01.{at_ms:03d}000001Z"
    if ending in ("duration", "both"):
        span["duration"] = draw(st.sampled_from(["0.008s", "3s", "0.000000001s"]))
    span["attributes"] = draw(st.sampled_from([{}, {"agent": "A"}, {"args": {"q": [1, {"deep": 2.0}]}, "n": 2.0}, {"n": 3}]))
    if depth < 3:
        kids = draw(st.integers(min_value=0, max_value=3))
        if kids:
            span["child_spans"] = [_tree(draw, depth + 1, at_ms + i + 1) for i in range(kids)]
    return span


@st.composite
def span_forests(draw) -> dict:
    return {"format": "ces_nb.transcript", "version": 1, "session": "s",
            "turns": [{"turn_index": i + 1, "outputs": [], "root_span": _tree(draw, 0, 10 * i)}
                      for i in range(draw(st.integers(min_value=0, max_value=4)))]}


@settings(max_examples=60, deadline=None)
@given(span_forests())
def test_any_tree_shape_gives_the_records_frame(data):
    """Pre-order rows, parents, depths, offsets from each root, durations given or measured, times
    with and without fractions, with Z or an offset or none, nested and integral-double attributes."""
    same(frames.spans_frame(copy.deepcopy(data)), frames.spans_frame(Transcript.from_dict(copy.deepcopy(data))))


def test_integral_doubles_and_nested_attributes_stay_as_written(tmp_path):
    t = transcript(n=1)
    t["turns"][0]["root_span"]["attributes"] = {"n": 2.0, "args": {"q": [1, 2.0, {"x": None}]}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))
    frame = frames.spans_frame(path)
    same(frame, frames.spans_frame(Transcript.load(path)))
    assert frame["n"].dtype == "float64" and frame["n"][0] == 2.0
    assert frame["args"][0] == {"q": [1, 2.0, {"x": None}]} and type(frame["args"][0]["q"][1]) is float


@pytest.mark.parametrize("text", ['{"turns": [], "n": 18446744073709551616}', '{"turns": [], "n": -9223372036854775809}',
                                  '{"turns": [], "n": NaN}', '{"turns": [], "n": 1e400}', '{"turns": [], "s": "\\ud800"}'])
def test_files_read_as_the_standard_library_reads_them(tmp_path, text):
    """msgspec's values, or the standard library's where msgspec refuses (orjson would turn the big
    ints into floats)."""
    path = tmp_path / "t.json"
    path.write_text(text)
    got, expected = read_json_file(path), json.loads(text)
    assert repr(got) == repr(expected) and type(got["n" if "n" in got else "s"]) is type(expected["n" if "n" in expected else "s"])


@pytest.mark.parametrize("content, says", [(b"\xef\xbb\xbf{}", "is not JSON (Unexpected UTF-8 BOM"),
                                           (b"turn 1: hello", "is not JSON (Expecting value: line 1 column 1"),
                                           (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not UTF-8 text (a binary file?)"),
                                           (b"[" * 100_000, "nests too deep")])
def test_a_file_that_is_no_json_says_which_file_and_what_to_write(tmp_path, content, says):
    """Transcript.load's message (one reader for both), with the file first and how to write
    one, and no chained JSONDecodeError: a notebook shows one line."""
    path = tmp_path / "t.json"
    path.write_bytes(content)
    for build in (frames.spans_frame, frames.turns_frame):
        with pytest.raises(ValueError) as caught:
            build(str(path))
        message = str(caught.value)
        assert message.startswith(str(path)) and says in message, message
        assert not isinstance(caught.value, json.JSONDecodeError) and caught.value.__cause__ is None
        if "nests" not in says:
            assert "session.save(path) or %cescmd save PATH" in message


@settings(max_examples=40, deadline=None)
@given(span_forests())
def test_any_tree_shape_in_a_file_gives_the_records_frame(data):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        got, expected = _file_frame(Path(folder), data)
    same(got, expected)


def test_records_and_json_in_one_list_give_the_records_frame(tmp_path):
    """Turn objects beside JSON: the JSON's rows join the records' as lists, numbered after them."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conversation()))
    mixed = frames.spans_frame([Transcript.from_dict(transcript(n=2)), path, transcript(n=1)])
    records = frames.spans_frame([Transcript.from_dict(transcript(n=2)), Transcript.load(path), Transcript.from_dict(transcript(n=1))])
    same(mixed, records)
    assert mixed["parent"].dropna().max() < len(mixed) and list(mixed["index"]) == list(range(len(mixed)))


def test_an_empty_file_and_a_named_pipe_are_read(tmp_path):
    """An empty file says it is no JSON; a named pipe's transcript gives its frame."""
    import os
    import threading

    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not JSON"):
        frames.spans_frame(empty)
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    text = json.dumps(transcript(n=2))
    writer = threading.Thread(target=pipe.write_text, args=(text,))
    writer.start()
    try:
        got = frames.spans_frame(pipe)
    finally:
        writer.join(timeout=10)
    same(got, frames.spans_frame(json.loads(text)))


def _frame_rows_in(queue, path) -> None:
    queue.put(len(frames.spans_frame(path)))


def test_a_forked_process_builds_frames_from_files_too(tmp_path):
    """The times are parsed on a background thread; a child forked after a frame was built (a
    multiprocessing pool on Linux) gets a thread of its own, not a pool that waits forever."""
    import multiprocessing

    path = tmp_path / "t.json"
    path.write_text(json.dumps(transcript(n=3)))
    rows = len(frames.spans_frame(path))  # the parent's background thread now exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_frame_rows_in, args=(queue, path))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked child's frame never finished"
    assert queue.get(timeout=5) == rows == 15


def test_times_centuries_apart_give_the_records_offsets_and_durations(tmp_path):
    """1700 and 2026 are both times protobuf reads, but their ns differ by more than an int64
    holds: the offset from the root and end - start are the records' exact ones, not wrapped."""
    t = transcript(n=2)
    children = t["turns"][1]["root_span"]["child_spans"]
    children[0]["start_time"] = "1700-01-01T00:00:00Z"  # an offset from a 2026 root
    children[1].update(start_time="1700-01-01T00:00:00Z", end_time="2100-01-01T00:00:00.5Z")  # a measured duration
    children[1].pop("duration", None)
    frame = frames.spans_frame(copy.deepcopy(t))
    same(frame, frames.spans_frame(Transcript.from_dict(copy.deepcopy(t))))
    got, expected = _file_frame(tmp_path, t)
    same(got, expected)
    assert frame["start_ms"].min() < -1e13 and frame["duration_ms"].max() > 1e13


def test_a_span_or_session_name_no_utf8_can_hold_gives_the_frame_from_every_source(tmp_path):
    """A lone surrogate in a span's name, or the session's, read from JSON by the standard library:
    pandas' str dtype refuses it, so those columns hold objects, the same from dicts, from the file
    and from the records."""
    t = transcript(n=2)
    t["session"] = "trip\ud800"
    t["turns"][1]["root_span"]["child_spans"][0]["name"] = "LLM caf\ud800"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))  # ASCII: written as \ud800, which msgspec refuses and json reads
    records = frames.spans_frame(Transcript.load(path))
    same(frames.spans_frame(copy.deepcopy(t)), records)
    same(frames.spans_frame(path), records)
    assert "LLM caf\ud800" in records["span"].tolist() and set(records["conversation"]) == {"trip\ud800"}
    assert records["span"].dtype == object and records["conversation"].dtype == object
