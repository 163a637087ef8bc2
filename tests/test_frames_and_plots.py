"""frames, latency_summary, plots and the SpanTree widget, from known span trees."""

from __future__ import annotations

import re

import numpy
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from matplotlib.collections import PolyCollection  # noqa: F401  (matplotlib present)
from matplotlib.patches import Rectangle

from ces_nb import frames, text_columns
from ces_nb.model import Span, Transcript, Turn
from ces_nb.render.plots import KIND_COLOURS, plot_latency, plot_spans
from ces_nb.render.span_tree import SpanTree

T0 = "2026-11-22T10:00:00Z"


def span_json(camel: bool = False) -> dict:
    """root 100 ms: LLM 10-40 (agent A), Tool 40-70 (name t1), LLM 70-95 with a Callback child 70-75."""
    def at(ms: float) -> str:
        return f"2026-11-22T10:00:00.{int(ms * 1000):06d}Z"

    def span(name, start, end, attributes=None, children=None):
        d = {"name": name, "start_time": at(start), "end_time": at(end), "attributes": attributes or {}}
        if children:
            d["child_spans"] = children
        return d

    tree = span("root", 0, 100, {"perceived latency (ms)": 42.0}, [
        span("LLM", 10, 40, {"agent": "A", "model": "m"}),
        span("Tool", 40, 70, {"name": "t1", "agent": "A", "args": '{"x": 1}'}),
        span("LLM", 70, 95, {"agent": "B"}, [span("Callback", 70, 75, {"agent": "B", "stage": "before_model"})]),
    ])
    return _camel(tree) if camel else tree


def _camel(value):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k) if k in ("start_time", "end_time", "child_spans") else k
            out[key] = _camel(v) if k != "attributes" else v
        return out
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def transcript(camel: bool = False, n: int = 2) -> dict:
    key = "rootSpan" if camel else "root_span"
    return {"format": "ces_nb.transcript", "version": 1, "session": "s1",
            "turns": [{"turn_index": i, "completed": True, "outputs": [{"text": f"answer {i}", "turn_index": i}],
                       "inputs": [{"text": f"q{i}"}], key: span_json(camel)} for i in range(1, n + 1)]}


@pytest.mark.parametrize("camel", [False, True])
def test_spans_frame_from_known_tree_in_both_key_cases(camel):
    frame = frames.spans_frame(transcript(camel))
    assert list(frame.columns[:9]) == frames.SPAN_COLUMNS
    first = frame[frame.turn == 1]
    assert list(first.span) == ["root", "LLM", "Tool", "LLM", "Callback"]
    assert list(first.depth) == [0, 1, 1, 1, 2]
    assert list(first.parent.astype("object").where(first.parent.notna(), None)) == [None, 0, 0, 0, 3]
    assert list(first.start_ms) == [0, 10, 40, 70, 70]
    assert list(first.duration_ms.round(3)) == [100, 30, 30, 25, 5]
    assert first.iloc[2]["name"] == "t1" and first.iloc[4]["stage"] == "before_model"
    assert first.iloc[0]["perceived latency (ms)"] == 42.0
    assert list(frame[frame.turn == 2]["parent"].dropna()) == [5, 5, 5, 8]  # rows of the second tree


def test_turns_outputs_and_tool_calls_frames():
    t = transcript()
    turns = frames.turns_frame(t)
    assert list(turns.turn) == [1, 2] and list(turns.agent) == ["answer 1", "answer 2"] and list(turns.duration_ms) == [100, 100]
    assert list(turns.perceived_latency_ms) == [42.0, 42.0] and list(turns.spans) == [5, 5]
    outputs = frames.outputs_frame(t)
    assert list(outputs.kind) == ["text", "text"] and list(outputs.value) == ["answer 1", "answer 2"]
    calls = frames.tool_calls_frame(t)
    assert list(calls.tool) == ["t1", "t1"] and list(calls.side) == ["server", "server"] and calls.args[0] == {"x": 1}


def test_server_tool_rows_read_struct_numbers_as_the_tool_got_them():
    """Tool spans carry args/response as Struct values (doubles) or as JSON text: both read the same."""
    d = span_json()
    d["child_spans"][1]["attributes"] = {"name": "t1", "agent": "A", "args": {"seat": "4A", "count": 2.0},
                                         "response": {"total": 210.0, "fee": 12.5}}
    calls = frames.tool_calls_frame({"format": "ces_nb.transcript", "turns": [{"turn_index": 1, "root_span": d, "outputs": []}]})
    args, response = calls.args[0], calls.response[0]
    assert args == {"seat": "4A", "count": 2} and type(args["count"]) is int
    assert type(response["total"]) is int and response["fee"] == 12.5


def test_latency_summary_percentiles():
    turns = []
    for i, ms in enumerate([10, 20, 30, 40, 100], start=1):
        d = span_json()
        d["child_spans"][0]["end_time"] = f"2026-11-22T10:00:00.{(10 + ms) * 1000:06d}Z"
        turns.append({"turn_index": i, "root_span": d, "outputs": []})
    summary = frames.latency_summary({"format": "ces_nb.transcript", "turns": turns})
    llm = summary.loc[("kind", "LLM")]
    # LLM durations: the first LLM (10..100 ms) and the second (25 ms) in each turn
    values = sorted([10, 20, 30, 40, 100] + [25] * 5)
    import numpy as np

    assert llm["count"] == 10 and llm["p50"] == pytest.approx(np.percentile(values, 50))
    assert llm["p90"] == pytest.approx(np.percentile(values, 90)) and llm["p99"] == pytest.approx(np.percentile(values, 99))
    assert summary.loc[("tool", "t1")]["p50"] == 30 and summary.loc[("agent", "B")]["count"] == 10
    assert summary.loc[("turn", "turn")]["max"] == 100


def test_plot_spans_has_a_bar_per_span_coloured_by_kind_and_the_perceived_latency():
    turn = Turn.from_dict({"turn_index": 1, "root_span": span_json(), "outputs": []})
    fig = plot_spans(turn)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 5
    assert [round(b.get_width(), 3) for b in bars] == [100, 30, 30, 25, 5]
    assert [round(b.get_x(), 3) for b in bars] == [0, 10, 40, 70, 70]
    from matplotlib.colors import to_hex

    assert to_hex(bars[1].get_facecolor()) == KIND_COLOURS["LLM"] and to_hex(bars[2].get_facecolor()) == KIND_COLOURS["Tool"]
    assert [t.get_text() for t in ax.get_yticklabels()][4] == "    Callback · B"
    assert any(line.get_xdata()[0] == 42.0 for line in ax.get_lines())


def test_plot_latency_stacks_kinds_per_turn_and_plots_distributions():
    t1 = Transcript.from_dict(transcript())
    t2 = Transcript.from_dict(transcript(n=3))
    t2.session = "s2"
    fig = plot_latency([t1, t2])
    bars_ax, dist_ax = fig.axes
    rects = [p for p in bars_ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 5 * 2  # 5 turns x (LLM, Tool): depth-1 kinds
    assert {t.get_text() for t in bars_ax.get_legend().get_texts()} == {"LLM", "Tool"}
    assert len(dist_ax.get_xticklabels()) == 2  # one box per conversation


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("make", ["spans", "latency"])
def test_plots_display_as_a_png_with_no_matplotlib_magic(make):
    """IPython's own formatter, with no %matplotlib backend: an image, not '<Figure size ...>' alone."""
    from IPython.core.formatters import DisplayFormatter
    from matplotlib.figure import Figure

    turn = Turn.from_dict({"turn_index": 1, "root_span": span_json(), "outputs": []})
    fig = plot_spans(turn) if make == "spans" else plot_latency([Transcript.from_dict(transcript())])
    assert isinstance(fig, Figure)  # still a Figure for further work
    data, _ = DisplayFormatter().format(fig)
    assert set(data) >= {"image/png", "text/plain"}
    png = data["image/png"]
    png = png if isinstance(png, bytes) else __import__("base64").b64decode(png)
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert b"Software" not in png and fig.png() == fig.png()  # same bytes every run


def test_committed_notebook_plots_hold_images():
    """A plot cell whose committed output is only text/plain ('<Figure size ...>') fails."""
    import json
    from pathlib import Path

    found = 0
    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and re.search(r"^plot_(spans|latency)\(", source, re.M):
                found += 1
                kinds = {k for out in cell.get("outputs", []) for k in out.get("data", {})}
                assert "image/png" in kinds, f"{path.name}: {source!r} has outputs {kinds}"
    assert found >= 2


def test_span_tree_widget_expands_shows_searches_and_flags_slow_spans():
    turn = Turn.from_dict({"turn_index": 1, "root_span": span_json(), "outputs": []})
    tree = SpanTree(turn, open_depth=1)
    labels = [label for label, _ in tree.list.options]
    assert len(labels) == 4 and labels[3].strip().startswith("▸ LLM")  # the Callback is folded away
    tree.toggle(3)
    assert len(tree.list.options) == 5 and "Callback" in tree.list.options[4][0]
    tree.list.value = 2
    assert "<th>args</th>" in tree.details.value and "&quot;x&quot;: 1" in tree.details.value
    tree.search.value = "before_model"
    assert [i for _, i in tree.list.options] == [0, 3, 4]  # the match and its ancestors
    tree.search.value = ""
    tree.threshold.value = 30
    slow = [label for label, _ in tree.list.options if "⚠ slow" in label]
    assert len(slow) == 3  # root 100, LLM 30, Tool 30
    tree.collapse_all()
    assert len(tree.list.options) == 1
    tree.expand_all()
    assert len(tree.list.options) == 5


def test_span_tree_escapes_attributes():
    hostile = '<script>alert(1)</script>'
    turn = Turn.from_dict({"turn_index": 1, "root_span": {"name": hostile, "attributes": {hostile: hostile}}, "outputs": []})
    tree = SpanTree(turn)
    assert "<script" not in tree.details.value and "&lt;script&gt;" in tree.details.value


def test_attributes_in_any_mapping_give_the_frame_of_dicts():
    """A Span built by hand may hold its attributes in another mapping: the frame reads it as a dict."""
    from types import MappingProxyType

    def frame(wrap):
        root = Span("root", 0, 10_000_000, 10_000_000, {"perceived latency (ms)": 3.0})
        root.children.append(Span("LLM", 1_000_000, None, 4_000_000, wrap({"agent": "A", "model": "m"})))
        root.children.append(Span("Tool", 5_000_000, None, 1_000_000, wrap({"name": "t", "agent": "A"})))
        return frames.spans_frame(Transcript([Turn(index=1, root_span=root, completed=True)]))

    expected = frame(dict)
    assert list(expected.columns[-4:]) == ["perceived latency (ms)", "agent", "model", "name"]
    pd.testing.assert_frame_equal(frame(MappingProxyType), expected)


_ATTRIBUTE_VALUES = st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["agent A", "", "ü", "\U0001f600"]),
                              st.binary(max_size=3), st.floats(allow_nan=True), st.integers(), st.booleans(),
                              st.builds(numpy.str_, st.text(max_size=3)), st.just(pd.NA), st.just(pd.NaT),
                              st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=8) | st.lists(_ATTRIBUTE_VALUES, max_size=8))
def test_attribute_columns_are_what_pandas_makes_of_their_values(values):
    """A column of text goes to Arrow whole; anything else is left to pandas' own inference: the
    same column either way, dtype and missing values included."""
    expected = pd.DataFrame({"c": values}, index=pd.RangeIndex(len(values)))
    got = pd.DataFrame({"c": text_columns.as_pandas_reads(list(values))}, index=pd.RangeIndex(len(values)))
    pd.testing.assert_frame_equal(got, expected, check_dtype=True, check_exact=True)
    assert got["c"].dtype == expected["c"].dtype and type(got["c"].array) is type(expected["c"].array)


def test_an_attribute_no_utf8_can_hold_stays_as_written(tmp_path):
    """A lone surrogate (the standard library reads "\\ud800" in a file) cannot go into pandas' str
    dtype, which raises; its column holds the strings as objects instead, and the frame is built."""
    import json

    root = Span("root", 0, 10_000_000, 10_000_000, {"said": "caf\ud800"})
    root.children.append(Span("LLM", 1_000_000, None, 4_000_000, {"said": "ok"}))
    frame = frames.spans_frame(Transcript([Turn(index=1, root_span=root, completed=True)]))
    assert frame["said"].tolist() == ["caf\ud800", "ok"] and frame["said"].dtype == object
    data = transcript(n=1)
    data["turns"][0]["root_span"]["attributes"]["said"] = "caf\ud800"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))  # ASCII: the surrogate written as \ud800
    assert frames.spans_frame(path)["said"].tolist()[0] == "caf\ud800"
