"""The records a run produces: one per expectation, one per case. Plain data, JSON both ways."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIPPED, ERROR = "PASS", "FAIL", "SKIPPED", "ERROR"  # CES's EvaluationResult.Outcome, plus ERROR


@dataclass
class ExpectationResult:
    kind: str
    metric: str
    expected: Any
    observed: Any
    outcome: str
    score: float | None = None
    explanation: str = ""
    match: str = ""
    at: str = ""
    turn: int = 0            # the case's turn (1-based); 0 for the case as a whole
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExpectationResult":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


@dataclass
class CaseResult:
    key: str
    name: str
    kind: str
    source: str = ""
    tags: list[str] = field(default_factory=list)
    outcome: str = PASS
    expectations: list[ExpectationResult] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)          # the observed turns, Turn.to_dict()
    step_turns: list[list[int]] = field(default_factory=list)  # per case turn: indexes into `turns`
    spans: list[list] = field(default_factory=list)          # [kind, ms] of every span of every turn
    latency_ms: float | None = None
    session: str = ""
    error: str = ""
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def decide(self) -> "CaseResult":
        outcomes = {e.outcome for e in self.expectations}
        self.outcome = (ERROR if self.error else FAIL if FAIL in outcomes or ERROR in outcomes
                        else PASS if PASS in outcomes else SKIPPED)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expectations"] = [e.to_dict() for e in self.expectations]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaseResult":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "expectations"}
        return cls(**kw, expectations=[ExpectationResult.from_dict(e) for e in d.get("expectations") or []])

    def turn_objects(self, step: int | None = None) -> list:
        """The observed turns as `Turn`s (all, or those answering case turn `step`, 1-based)."""
        from ..model import Turn

        indexes = range(len(self.turns)) if step is None else (self.step_turns[step - 1] if 0 < step <= len(self.step_turns) else [])
        return [Turn.from_dict(self.turns[i], strict=False) for i in indexes]
