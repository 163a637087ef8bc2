"""Evaluations: cxas-scrapi goldens, tool tests and turn evals, and native CES Evaluations, run
against any connection (the emulator or real CES), scored with CES's metric names.

    run = ces_nb.evaluate("evals/", client=client, parallel=4)
    run.frame, run.summary, run.save("run.json"), run.compare(EvalRun.load("baseline.json"))
"""

from .cases import Case, Expectation, MockAnswer, Step, Thresholds
from .compare import RunComparison
from .errors import EvalFileError
from .judges import GeminiJudge, Judgement, TextSimilarityJudge
from .loading import load
from .results import CaseResult, ExpectationResult
from .run import EvalRun
from .runner import evaluate, run_case

__all__ = ["evaluate", "run_case", "load", "EvalRun", "RunComparison", "CaseResult", "ExpectationResult", "Case", "Step",
           "Expectation", "MockAnswer", "Thresholds", "EvalFileError", "TextSimilarityJudge", "GeminiJudge", "Judgement"]
