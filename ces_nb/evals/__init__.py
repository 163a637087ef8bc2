"""Evaluations: cxas-scrapi goldens, tool tests and turn evals, and native CES Evaluations, run
against any connection (the emulator or real CES), scored with CES's metric names.

    run = ces_nb.evaluate("evals/", client=client, parallel=4)
    run.frame, run.summary, run.save("run.json"), run.compare(EvalRun.load("baseline.json"))

Names load on first use, so `ces-nb` registering its `eval` command stays light.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "evaluate": "runner", "run_case": "runner", "load": "loading", "EvalRun": "run", "RunComparison": "compare",
    "CaseResult": "results", "ExpectationResult": "results", "Case": "cases", "Step": "cases", "Expectation": "cases",
    "MockAnswer": "cases", "Thresholds": "cases", "EvalFileError": "errors", "TextSimilarityJudge": "judges",
    "GeminiJudge": "judges", "Judgement": "judges",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ces_nb.evals' has no attribute {name!r}")
