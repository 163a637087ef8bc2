"""EvalRun: the verdicts of one evaluate() call. Frames, summary, report, save/load, compare."""

from __future__ import annotations

import json
from pathlib import Path

from .results import ERROR, FAIL, PASS, SKIPPED, CaseResult

FORMAT, VERSION = "ces_nb.eval_run", 1
FRAME_COLUMNS = ["conversation", "turn", "kind", "metric", "match", "expected", "observed", "outcome", "score",
                 "latency_ms", "explanation", "at", "source", "tags"]


class EvalRun:
    """`cases`: a CaseResult per conversation or tool test; `meta`: where it ran."""

    def __init__(self, cases: list[CaseResult], meta: dict | None = None):
        self.cases = list(cases)
        self.meta = dict(meta or {})

    # -- reading --------------------------------------------------------------------

    @property
    def passed(self) -> bool:
        """Every case passed (or was skipped); none failed or erred."""
        return all(c.outcome in (PASS, SKIPPED) for c in self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.outcome in (FAIL, ERROR)]

    def __getitem__(self, key: str) -> CaseResult:
        for c in self.cases:
            if key in (c.key, c.name):
                return c
        raise KeyError(f"no case {key!r}; the cases are {[c.name for c in self.cases]}")

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def frame(self):
        """One row per expectation: conversation, turn, kind, expected, observed, outcome, score, latency."""
        import pandas as pd

        rows = []
        for c in self.cases:
            if c.error:
                rows.append({"conversation": c.key, "turn": 0, "kind": "error", "metric": "", "match": "", "expected": None,
                             "observed": c.error, "outcome": ERROR, "score": None, "latency_ms": c.latency_ms,
                             "explanation": c.error, "at": "", "source": c.source, "tags": list(c.tags)})
            for e in c.expectations:
                rows.append({"conversation": c.key, "turn": e.turn, "kind": e.kind, "metric": e.metric, "match": e.match,
                             "expected": e.expected, "observed": e.observed, "outcome": e.outcome, "score": e.score,
                             "latency_ms": e.latency_ms, "explanation": e.explanation, "at": e.at, "source": c.source,
                             "tags": list(c.tags)})
        return pd.DataFrame(rows, columns=FRAME_COLUMNS)

    @property
    def cases_frame(self):
        """One row per case: its outcome, counts and latency."""
        import pandas as pd

        rows = [{"conversation": c.key, "kind": c.kind, "outcome": c.outcome,
                 "passed": sum(e.outcome == PASS for e in c.expectations),
                 "failed": sum(e.outcome in (FAIL, ERROR) for e in c.expectations),
                 "skipped": sum(e.outcome == SKIPPED for e in c.expectations),
                 "latency_ms": c.latency_ms, "tags": list(c.tags)} for c in self.cases]
        return pd.DataFrame(rows, columns=["conversation", "kind", "outcome", "passed", "failed", "skipped", "latency_ms", "tags"])

    @property
    def summary(self):
        """Pass rates by kind and by tag (expectations; SKIPPED counted apart, not in the rate)."""
        import pandas as pd

        frame = self.frame
        rows = []
        for by in ("kind", "tag"):
            exploded = frame.assign(tag=frame["tags"]).explode("tag") if by == "tag" else frame
            exploded = exploded[exploded[by].notna()] if len(exploded) else exploded
            for value, group in exploded.groupby(by, sort=True):
                passed = int((group["outcome"] == PASS).sum())
                failed = int(group["outcome"].isin([FAIL, ERROR]).sum())
                skipped = int((group["outcome"] == SKIPPED).sum())
                rate = passed / (passed + failed) if passed + failed else None
                rows.append({"by": by, "value": value, "passed": passed, "failed": failed, "skipped": skipped, "pass_rate": rate})
        return pd.DataFrame(rows, columns=["by", "value", "passed", "failed", "skipped", "pass_rate"]).set_index(["by", "value"])

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, SKIPPED: 0, ERROR: 0}
        for c in self.cases:
            out[c.outcome] += 1
        return out

    # -- files ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta, "cases": [c.to_dict() for c in self.cases]}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalRun":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not an eval run (expected an object with \"format\": \"{FORMAT}\"); write one with EvalRun.save")
        if d.get("version", VERSION) > VERSION:
            raise ValueError(f"eval run format version {d['version']} is newer than this ces_nb reads ({VERSION}); upgrade ces_nb")
        return cls([CaseResult.from_dict(c) for c in d.get("cases") or []], d.get("meta") or {})

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvalRun":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc}); an eval run is written by EvalRun.save") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    # -- comparing and showing --------------------------------------------------------

    def compare(self, other: "EvalRun", seed: int = 0, resamples: int = 1000):
        """`other` is the baseline: what went pass->fail and fail->pass, and latency deltas by span kind."""
        from .compare import RunComparison

        return RunComparison(other, self, seed=seed, resamples=resamples)

    def text(self, cases: bool = True) -> str:
        """The verdicts as text; `cases=False` lists only what failed (after a table of every case)."""
        from .report import run_text

        return run_text(self, cases=cases)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .report import run_html

        text = self.text()
        return {"text/plain": text, "text/html": run_html(self, text)}
