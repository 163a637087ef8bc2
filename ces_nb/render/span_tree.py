"""SpanTree: an interactive span tree (ipywidgets) over the static one.

Expand and collapse nodes, click a span to see all its attributes (args and
responses pretty-printed), search by name or attribute, and flag spans slower
than a threshold. The static HTML tree stays what exports show.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

import ipywidgets as w

from ..model import Span, Turn
from .text import integral


class SpanTree(w.VBox):
    def __init__(self, obj: Turn | Span, threshold_ms: float = 0.0, open_depth: int = 1, **kwargs):
        root = getattr(obj, "root_span", obj)  # a Turn, a session's LiveTurn, or a Span
        if not isinstance(root, Span):
            raise TypeError("SpanTree takes a Turn with a root span, or a Span")
        self.root = root
        self.nodes: list[tuple[int, Span]] = list(root.walk())
        self.parents: list[int | None] = []
        stack: list[int] = []
        for i, (depth, _) in enumerate(self.nodes):
            del stack[depth:]
            self.parents.append(stack[-1] if stack else None)
            stack.append(i)
        self.expanded = {i for i, (depth, span) in enumerate(self.nodes) if depth < open_depth and span.children}
        self.search = w.Text(placeholder="search name or attribute", description="search")
        self.threshold = w.FloatText(value=threshold_ms, description="slow ≥ ms")
        self.list = w.Select(options=[], rows=min(18, max(4, len(self.nodes))), layout=w.Layout(width="100%"))
        self.toggle_button = w.Button(description="expand / collapse", icon="sitemap")
        self.expand_all_button = w.Button(description="expand all")
        self.collapse_all_button = w.Button(description="collapse all")
        self.details = w.HTML()
        self.toggle_button.on_click(lambda _: self.toggle(self.list.value))
        self.expand_all_button.on_click(lambda _: self.expand_all())
        self.collapse_all_button.on_click(lambda _: self.collapse_all())
        self.search.observe(lambda _: self.refresh(), "value")
        self.threshold.observe(lambda _: self.refresh(), "value")
        self.list.observe(lambda change: self.show(change["new"]), "value")
        super().__init__([w.HBox([self.search, self.threshold]),
                          w.HBox([self.toggle_button, self.expand_all_button, self.collapse_all_button]),
                          self.list, self.details], **kwargs)
        self.refresh()
        self.show(0)

    def __repr__(self) -> str:
        duration = "" if self.root.duration_ms is None else f", root {self.root.duration_ms:.1f} ms"
        return f"SpanTree({len(self.nodes)} spans{duration})"

    # -- state -------------------------------------------------------------------------

    def matches(self, i: int) -> bool:
        query = self.search.value.strip().lower()
        if not query:
            return True
        _, span = self.nodes[i]
        return query in span.name.lower() or any(query in str(k).lower() or query in str(v).lower()
                                                 for k, v in span.attributes.items())

    def is_slow(self, span: Span) -> bool:
        return bool(self.threshold.value) and (span.duration_ms or 0.0) >= self.threshold.value

    def visible(self) -> list[int]:
        """Rows to show: under expanded parents, or, while searching, the matches and their ancestors."""
        if self.search.value.strip():
            keep: set[int] = set()
            for i in range(len(self.nodes)):
                if self.matches(i):
                    j: int | None = i
                    while j is not None and j not in keep:
                        keep.add(j)
                        j = self.parents[j]
            return sorted(keep)
        shown: list[int] = []
        seen: set[int] = set()  # rows come in pre-order: a parent is decided before its children
        for i in range(len(self.nodes)):
            j = self.parents[i]
            if j is None or (j in self.expanded and j in seen):
                shown.append(i)
                seen.add(i)
        return shown

    def label(self, i: int) -> str:
        depth, span = self.nodes[i]
        mark = ("▾" if i in self.expanded else "▸") if span.children else "·"
        duration = f"{span.duration_ms:.1f} ms" if span.duration_ms is not None else ""
        key = span.attributes.get("name") or span.attributes.get("agent") or ""
        slow = "  ⚠ slow" if self.is_slow(span) else ""
        return f"{'   ' * depth}{mark} {span.name}{f' · {key}' if key else ''}  {duration}{slow}"

    def refresh(self) -> None:
        selected = self.list.value
        rows = self.visible()
        self.list.options = [(self.label(i), i) for i in rows]
        if selected in rows:
            self.list.value = selected

    def toggle(self, i: int | None) -> None:
        if i is None or not self.nodes[i][1].children:
            return
        self.expanded ^= {i}
        self.refresh()

    def expand_all(self) -> None:
        self.expanded = {i for i, (_, span) in enumerate(self.nodes) if span.children}
        self.refresh()

    def collapse_all(self) -> None:
        self.expanded = set()
        self.refresh()

    def show(self, i: int | None) -> None:
        """All of a span's attributes; JSON in args/responses pretty-printed, everything escaped."""
        if i is None:
            self.details.value = ""
            return
        _, span = self.nodes[i]
        rows = [f"<tr><th>name</th><td>{escape(span.name)}</td></tr>",
                f"<tr><th>duration</th><td>{'' if span.duration_ms is None else f'{span.duration_ms:.3f} ms'}</td></tr>"]
        for key in sorted(span.attributes):
            rows.append(f"<tr><th>{escape(str(key))}</th><td><pre>{escape(_pretty(span.attributes[key]))}</pre></td></tr>")
        self.details.value = f'<table class="ces-table">{"".join(rows)}</table>'


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, (dict, list)):
            return json.dumps(integral(parsed), indent=1, ensure_ascii=False, sort_keys=True)
        return value
    return json.dumps(integral(value), indent=1, ensure_ascii=False, sort_keys=True)
