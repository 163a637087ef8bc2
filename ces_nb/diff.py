"""Transcript.diff: two runs side by side, turn by turn, only where they differ."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: Transcript.diff builds this
    from .model import Transcript, Turn


@dataclass
class Difference:
    turn: int
    field: str
    left: Any
    right: Any


def _calls(turn: Turn | None) -> list[dict]:
    return [] if turn is None else [{"tool": c.name, "args": c.args} for c in turn.tool_calls]


def _kind_ms(turn: Turn | None) -> dict[str, float]:
    totals: dict[str, float] = {}
    if turn is None or turn.root_span is None:
        return totals
    totals["turn"] = turn.root_span.duration_ms or 0.0
    for depth, span in turn.root_span.walk():
        if depth == 1:
            totals[span.kind] = totals.get(span.kind, 0.0) + (span.duration_ms or 0.0)
    return totals


@dataclass
class TranscriptDiff:
    left: Transcript
    right: Transcript
    tolerance: float = 0.5
    min_ms: float = 5.0
    differences: list[Difference] = field(init=False)

    def __post_init__(self) -> None:
        self.differences = []
        for i in range(max(len(self.left.turns), len(self.right.turns))):
            a = self.left.turns[i] if i < len(self.left.turns) else None
            b = self.right.turns[i] if i < len(self.right.turns) else None
            n = (a or b).index or i + 1
            if a is None or b is None:
                self.differences.append(Difference(n, "turn", _brief(a), _brief(b)))
                continue
            if a.user_text != b.user_text:
                self.differences.append(Difference(n, "user", a.user_text, b.user_text))
            if a.text != b.text:
                self.differences.append(Difference(n, "text", a.text, b.text))
            if _calls(a) != _calls(b):
                self.differences.append(Difference(n, "tool calls", _calls(a), _calls(b)))
            if a.payloads != b.payloads:
                self.differences.append(Difference(n, "payloads", a.payloads, b.payloads))
            if a.ended != b.ended:
                self.differences.append(Difference(n, "ended", a.ended, b.ended))
            ka, kb = _kind_ms(a), _kind_ms(b)
            for kind in sorted(set(ka) | set(kb)):
                x, y = ka.get(kind, 0.0), kb.get(kind, 0.0)
                if abs(x - y) >= self.min_ms and abs(x - y) >= self.tolerance * max(x, y, 1e-9):
                    self.differences.append(Difference(n, f"{kind} ms", round(x, 1), round(y, 1)))

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame([vars(d) for d in self.differences], columns=["turn", "field", "left", "right"])

    def __bool__(self) -> bool:
        return bool(self.differences)

    def __len__(self) -> int:
        return len(self.differences)

    def __repr__(self) -> str:
        if not self.differences:
            return f"no differences across {len(self.left.turns)} turn(s)"
        lines = [f"{len(self.differences)} difference(s):"]
        lines += [f"  turn {d.turn} {d.field}: {_text(d.left)}  |  {_text(d.right)}" for d in self.differences]
        return "\n".join(lines)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import diff_html

        return {"text/plain": repr(self), "text/html": diff_html(self, repr(self))}


def _brief(turn: Turn | None) -> str:
    return "(no turn)" if turn is None else f"{turn.user_text} -> {turn.text}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
