"""Two runs of the same cases: expectation changes (pass->fail first) and latency by span kind."""

from __future__ import annotations

import numpy as np

from .results import ERROR, FAIL, PASS

REGRESSION, FIXED = "pass→fail", "fail→pass"


def _key(case, e) -> tuple:
    return (case.key, e.turn, e.kind, e.at)


def _ok(outcome: str) -> bool | None:
    return True if outcome == PASS else False if outcome in (FAIL, ERROR) else None


def percentile_ci(a: np.ndarray, b: np.ndarray, q: float, rng, resamples: int) -> tuple[float, float, float]:
    """The q-th percentile of b minus that of a, and a 95% bootstrap interval for it."""
    delta = float(np.percentile(b, q) - np.percentile(a, q))
    if len(a) < 2 or len(b) < 2:
        return delta, float("nan"), float("nan")
    da = np.percentile(rng.choice(a, (resamples, len(a))), q, axis=1)
    db = np.percentile(rng.choice(b, (resamples, len(b))), q, axis=1)
    low, high = np.percentile(db - da, [2.5, 97.5])
    return delta, float(low), float(high)


class RunComparison:
    """`baseline` vs `current`. `.frame`: expectations whose outcome changed (regressions first);
    `.latency`: p50/p90 per span kind with bootstrap CIs for the deltas."""

    def __init__(self, baseline, current, seed: int = 0, resamples: int = 1000):
        self.baseline, self.current = baseline, current
        self.seed, self.resamples = seed, resamples
        self.threshold = 0.25  # latency_regressions' default: what text and HTML flag
        before = {_key(c, e): e for c in baseline.cases for e in c.expectations}
        after = {_key(c, e): e for c in current.cases for e in c.expectations}
        rows = []
        for key in list(before) + [k for k in after if k not in before]:
            b, a = before.get(key), after.get(key)
            was, now = _ok(b.outcome) if b else None, _ok(a.outcome) if a else None
            if b is None:
                change = "new"
            elif a is None:
                change = "gone"
            elif was is True and now is False:
                change = REGRESSION
            elif was is False and now is True:
                change = FIXED
            else:
                continue
            rows.append({"change": change, "conversation": key[0], "turn": key[1], "kind": key[2], "at": key[3],
                         "before": b.outcome if b else None, "after": a.outcome if a else None,
                         "expected": (a or b).expected, "observed_before": b.observed if b else None,
                         "observed_after": a.observed if a else None, "explanation": a.explanation if a else ""})
        order = {REGRESSION: 0, FIXED: 1, "new": 2, "gone": 3}
        self.changes = sorted(rows, key=lambda r: (order[r["change"]], r["conversation"], r["turn"]))

    @property
    def regressions(self) -> list[dict]:
        return [r for r in self.changes if r["change"] == REGRESSION]

    @property
    def fixed(self) -> list[dict]:
        return [r for r in self.changes if r["change"] == FIXED]

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.changes, columns=["change", "conversation", "turn", "kind", "at", "before", "after", "expected",
                                                   "observed_before", "observed_after", "explanation"])

    @staticmethod
    def _spans(run) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for c in run.cases:
            for kind, ms in c.spans:
                out.setdefault(kind, []).append(float(ms))
        return out

    @property
    def latency(self):
        """Per span kind: n, p50 and p90 before and after, their deltas (ms) and 95% bootstrap CIs."""
        import pandas as pd

        rng = np.random.default_rng(self.seed)
        a_all, b_all = self._spans(self.baseline), self._spans(self.current)
        rows = []
        for kind in sorted(set(a_all) & set(b_all)):
            a, b = np.array(a_all[kind]), np.array(b_all[kind])
            row = {"kind": kind, "n_before": len(a), "n_after": len(b)}
            for q in (50, 90):
                delta, low, high = percentile_ci(a, b, q, rng, self.resamples)
                row.update({f"p{q}_before": float(np.percentile(a, q)), f"p{q}_after": float(np.percentile(b, q)),
                            f"p{q}_delta": delta, f"p{q}_ci_low": low, f"p{q}_ci_high": high})
            rows.append(row)
        return pd.DataFrame(rows).set_index("kind") if rows else pd.DataFrame()

    def latency_regressions(self, threshold: float | None = None, min_ms: float = 5.0) -> list[str]:
        """Span kinds whose p90 grew by more than `threshold` (relative; default `self.threshold`)
        and `min_ms`, with the CI for the growth above zero."""
        threshold = self.threshold if threshold is None else threshold
        frame = self.latency
        out = []
        for kind, row in frame.iterrows():
            grew = row["p90_delta"]
            if grew > min_ms and grew > threshold * max(row["p90_before"], 1e-9) and not (row["p90_ci_low"] <= 0):
                out.append(f"{kind}: p90 {row['p90_before']:.1f} → {row['p90_after']:.1f} ms (+{grew:.1f}, 95% CI "
                           f"{row['p90_ci_low']:.1f}..{row['p90_ci_high']:.1f})")
        return out

    def text(self) -> str:
        from .report import comparison_text

        return comparison_text(self)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .report import comparison_html

        text = self.text()
        return {"text/plain": text, "text/html": comparison_html(self, text)}


class RunWithBaseline:
    """A run and its comparison with a baseline (`%cescmd eval … --baseline RUN.json`): shown as
    the comparison, then the run. `.run`, `.comparison`; unpacks as `run, comparison = result`."""

    def __init__(self, run, comparison):
        self.run, self.comparison = run, comparison

    def __iter__(self):
        return iter((self.run, self.comparison))

    @property
    def passed(self) -> bool:
        return self.run.passed and not self.comparison.regressions and not self.comparison.latency_regressions()

    def text(self) -> str:
        return self.comparison.text() + "\n\n" + self.run.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        text = self.text()
        return {"text/plain": text, "text/html": self.comparison._repr_mimebundle_()["text/html"]
                + self.run._repr_mimebundle_()["text/html"]}
