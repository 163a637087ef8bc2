"""matplotlib views of latency: a span waterfall for one turn, and latency across turns.

Both return a `SpanFigure`: a matplotlib Figure (so `fig.savefig`, `fig.axes`, ... work)
that displays itself as a PNG image, with no `%matplotlib` line and no pyplot state. The
PNG carries no "Software" metadata, so re-running a notebook gives the same bytes.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

KIND_COLOURS = {
    "LLM": "#a142f4", "Tool": "#e37400", "Callback": "#188038", "Guardrail": "#d93025",
    "VAD": "#12b5cb", "ASR": "#1a73e8", "TTS": "#f538a0", "root": "#9aa0a6",
}
OTHER_COLOUR = "#5f6368"


@lru_cache(maxsize=1)
def figure_class():
    """matplotlib's Figure, plus IPython's `_repr_png_` (imported on first use: matplotlib is heavy)."""
    from matplotlib.figure import Figure

    class SpanFigure(Figure):
        """A Figure that shows itself as an image in any notebook front end."""

        def png(self, dpi: int = 100) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
            return buffer.getvalue()

        def _repr_png_(self) -> bytes:
            return self.png()

    SpanFigure.__module__ = __name__
    return SpanFigure


def _figure(ax=None, size=(9, 4)):
    if ax is not None:
        return ax.figure, ax
    fig = figure_class()(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def plot_spans(obj: Any, ax=None):
    """A waterfall of one turn's spans: a bar per span on a time axis (ms from the root's
    start), labels indented by depth, coloured by kind, perceived latency marked."""
    from ..model import Span

    root = getattr(obj, "root_span", obj)  # a Turn, a session's LiveTurn, or a Span
    if not isinstance(root, Span):
        raise TypeError("plot_spans takes a Turn with a root span, or a Span")
    spans = list(root.walk())
    fig, ax = _figure(ax, size=(9, max(2.0, 0.32 * len(spans) + 1)))
    origin = root.start_ns or 0
    labels = []
    for row, (depth, span) in enumerate(spans):
        start = ((span.start_ns or origin) - origin) / 1e6
        ax.barh(row, span.duration_ms or 0.0, left=start, height=0.6,
                color=KIND_COLOURS.get(span.kind, OTHER_COLOUR), label=span.kind)
        detail = span.attributes.get("name") or span.attributes.get("agent") or ""
        labels.append("  " * depth + span.name + (f" · {detail}" if detail else ""))
    ax.set_yticks(range(len(spans)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms from the start of the turn")
    perceived = root.attributes.get("perceived latency (ms)")
    if isinstance(perceived, (int, float)):
        ax.axvline(perceived, color="#d93025", linestyle="--", linewidth=1, label=f"perceived latency {perceived:.0f} ms")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title("spans")
    return fig


def plot_latency(obj: Any):
    """Left: per turn, the time in each span kind, stacked. Right: the distribution of turn
    latency per conversation. Takes a spans_frame or anything spans_frame takes."""
    import pandas as pd

    from ..frames import spans_frame

    frame = obj if isinstance(obj, pd.DataFrame) and "kind" in obj else spans_frame(obj)
    fig = figure_class()(figsize=(11, 4), layout="constrained")
    bars, dist = fig.subplots(1, 2, width_ratios=[2, 1])
    children = frame[frame["depth"] == 1]
    if len(children):
        stacked = children.pivot_table(index=["conversation", "turn"], columns="kind", values="duration_ms", aggfunc="sum", fill_value=0)
        bottom = None
        positions = range(len(stacked))
        for kind in stacked.columns:
            values = stacked[kind].to_numpy()
            bars.bar(positions, values, bottom=bottom, color=KIND_COLOURS.get(kind, OTHER_COLOUR), label=kind)
            bottom = values if bottom is None else bottom + values
        bars.set_xticks(list(positions), [str(t) for _, t in stacked.index], fontsize="small")
        bars.legend(fontsize="small")
    bars.set_xlabel("turn")
    bars.set_ylabel("ms")
    bars.set_title("time per turn, by span kind")
    roots = frame[frame["depth"] == 0]
    groups = [(name[-12:] or "(unsaved)", g["duration_ms"].dropna().to_numpy()) for name, g in roots.groupby("conversation", sort=False)]
    if groups:
        dist.boxplot([g for _, g in groups], tick_labels=[n for n, _ in groups], vert=True)
        dist.tick_params(axis="x", labelrotation=45, labelsize="small")
    dist.set_ylabel("turn latency (ms)")
    dist.set_title("per conversation")
    return fig
