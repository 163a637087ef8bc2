"""What a file asks for, as plain records: cases made of steps, each step's inputs and expectations.

Every reader (cxas-scrapi YAML, native CES Evaluation JSON) produces these; the runner sends a
case's steps and the scorer compares what came back with its expectations. No I/O here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Expectation kinds, named after CES's evaluation metrics where CES has one.
TOOL_CALL = "tool_call"              # tool invocation correctness: name + parameter correctness
TOOL_ORDER = "tool_order"            # tool ordered invocation
AGENT_TRANSFER = "agent_transfer"
UPDATED_VARIABLES = "updated_variables"
END_SESSION = "end_session"
AGENT_RESPONSE = "agent_response"    # exact / contains / regexp / semantic
NO_TOOL_CALLS = "no_tool_calls"
TOOL_NOT_CALLED = "tool_not_called"
TOOL_OUTPUT = "tool_output"          # turn evals: a tool's response holds these fields
TOOL_RESPONSE = "tool_response"      # tool tests: a JSONPath into ExecuteTool's response
TOOL_VARIABLES = "tool_variables"    # tool tests: a JSONPath into ExecuteTool's variables
RUBRIC = "rubric"                    # natural-language expectation: needs an LLM judge
SCENARIO = "scenario"                # the part of a scenario a simulated user would play

KINDS = (TOOL_CALL, TOOL_ORDER, AGENT_TRANSFER, UPDATED_VARIABLES, END_SESSION, AGENT_RESPONSE, NO_TOOL_CALLS,
         TOOL_NOT_CALLED, TOOL_OUTPUT, TOOL_RESPONSE, TOOL_VARIABLES, RUBRIC, SCENARIO)

# CES's metric for each kind (EvaluationResult field names).
METRICS = {
    TOOL_CALL: "tool_invocation_score",
    TOOL_ORDER: "tool_ordered_invocation_score",
    AGENT_TRANSFER: "agent_transfer",
    UPDATED_VARIABLES: "updated_variables",
    END_SESSION: "end_session",
    AGENT_RESPONSE: "semantic_similarity_result",
    NO_TOOL_CALLS: "no_tool_calls",
    TOOL_NOT_CALLED: "tool_invocation_score",
    TOOL_OUTPUT: "tool_response",
    TOOL_RESPONSE: "tool_response",
    TOOL_VARIABLES: "updated_variables",
    RUBRIC: "evaluation_expectation_results",
    SCENARIO: "scenario_expectation_outcome",
}

MATCH_TYPES = ("exact", "contains", "regexp", "semantic", "ignore")


@dataclass
class Expectation:
    """One thing to check. `expected` is plain JSON; tool-call args may hold `$matchType` markers.
    `match` says how text is compared (exact, contains, regexp, semantic; `not_contains` for turn
    evals); tool tests keep their operator there. `at` is where the file said it."""

    kind: str
    expected: Any = None
    match: str = "exact"
    at: str = ""
    path: str = ""          # tool tests: the JSONPath
    note: str = ""          # why it is not evaluated, when it is not


@dataclass
class MockAnswer:
    """A client tool call's answer given by the golden (scrapi `output`, CES `mockToolResponse`)."""

    tool: str
    response: dict
    args: dict | None = None


@dataclass
class Step:
    """One user turn: what to send (Session.send keyword arguments), how to answer the client
    tool calls it causes, and what to expect of the agent's answer."""

    inputs: dict = field(default_factory=dict)
    expectations: list[Expectation] = field(default_factory=list)
    mocks: list[MockAnswer] = field(default_factory=list)
    at: str = ""
    thresholds: "Thresholds | None" = None  # a golden turn's turnLevelMetricsThresholdsOverride


@dataclass
class Thresholds:
    """CES's EvaluationMetricsThresholds, the fields the scorer uses (None: the default)."""

    tool_invocation_parameter_correctness_threshold: float | None = None  # expectation level, 0..1
    overall_tool_invocation_correctness_threshold: float | None = None    # turn level, 0..1
    semantic_similarity_success_threshold: int | None = None               # turn level, CES's 0..4 scale
    extra_tool_call_behavior: str | None = None                            # FAIL or ALLOW

    def merged(self, override: "Thresholds | None") -> "Thresholds":
        if override is None:
            return self
        mine, theirs = asdict(self), asdict(override)
        return Thresholds(**{k: theirs[k] if theirs[k] is not None else mine[k] for k in mine})


GOLDEN, TURN_EVAL, TOOL_TEST, SCENARIO_CASE = "golden", "turn_eval", "tool_test", "scenario"


@dataclass
class Case:
    """One conversation (golden, turn eval, scenario) or one tool test: each runs in a fresh session."""

    name: str
    kind: str = GOLDEN
    source: str = ""            # the file it came from
    at: str = ""                # where in the file
    tags: list[str] = field(default_factory=list)
    variables: dict = field(default_factory=dict)   # session parameters, sent with the first turn
    steps: list[Step] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)  # about the whole case
    tool: str = ""              # tool tests
    args: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)     # tool tests: ExecuteTool's context (python tools)
    thresholds: Thresholds | None = None
    description: str = ""

    @property
    def key(self) -> str:
        """What identifies the case across runs: its file (with its folder) and its own name."""
        from pathlib import PurePath

        return f"{'/'.join(PurePath(self.source).parts[-2:])}::{self.name}" if self.source and not self.source.startswith("<") else self.name
