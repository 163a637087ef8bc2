"""Playing a CES Evaluation on the emulator itself, scored by `ces_nb.evals`.

The EvaluationService turns each stored Evaluation into a `Case` with the same reader
`ces_nb.evaluate` uses (`evals.native.read_evaluation`), and runs it with the same runner and
scorer (`evals.conversation.run_in_session`). Only the session differs: `EmulatorConversation` sends
each turn to this emulator's own SessionService in process, where a notebook `Session` would
send it over the network. So a golden gets the same verdict from the notebook, `ces-nb eval`
and RunEvaluation.

The runner is synchronous (a notebook's session blocks on each turn); it runs in a worker
thread, and each turn is handed back to the server's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from google.cloud import ces_v1, ces_v1beta
from google.protobuf import json_format

from ..convert.session_output import turn_from_outputs
from ..evals.cases import RUBRIC, Case
from ..evals.native import read_evaluation
from ..evals.results import CaseResult
from ..evals.conversation import run_in_session
from ..inputs import build_inputs
from ..model import ToolCall, Turn, pending_calls

# Longest a turn may take inside an evaluation (RunSession's own client default is 220 s).
TURN_TIMEOUT_S = 220.0


class _EvaluationRuns:
    """The context run_session gets for an evaluation's turn: all evaluation runs are one client
    of the worker's fair share (fair_share.py), busy while they run, so a person's turns meanwhile
    go first."""

    @staticmethod
    def peer() -> str:
        return "evaluation runs"


class EmulatorConversation:
    """One session on the emulator's SessionService, with what the evaluation runner asks of a
    session: `name`, `auto_answer`, `pending`, `ended`, `send`, `respond`."""

    def __init__(self, sessions, session_name: str, loop: asyncio.AbstractEventLoop, stopping: threading.Event):
        self.sessions = sessions
        self.name = session_name
        self.loop = loop
        self.stopping = stopping  # set when the emulator stops: the thread must not wait on a stopped loop
        self.auto_answer = False  # the runner answers client tools, from the golden
        self.turns: list[Turn] = []

    def send(self, text: str | None = None, **inputs: Any) -> Turn:
        request_inputs = build_inputs(text, pending=self.pending, **inputs)
        request = ces_v1.RunSessionRequest(config=ces_v1.SessionConfig(session=self.name), inputs=request_inputs)
        future = asyncio.run_coroutine_threadsafe(self.sessions.run_session(request, _EvaluationRuns()), self.loop)
        deadline = time.monotonic() + TURN_TIMEOUT_S
        while True:
            try:
                response = future.result(0.25)
                break
            except concurrent.futures.TimeoutError:
                if self.stopping.is_set() or time.monotonic() > deadline:
                    future.cancel()
                    raise TimeoutError("the emulator stopped during the turn" if self.stopping.is_set()
                                       else f"the turn took over {TURN_TIMEOUT_S:g} s") from None
        turn = turn_from_outputs(response.outputs, request_inputs)
        self.turns.append(turn)
        return turn

    def respond(self, responses: Any, *, how: str = "mock", **more: Any) -> Turn:
        return self.send(tool_responses=responses, **more)

    @property
    def pending(self) -> dict[str, ToolCall]:
        return pending_calls(self.turns)

    @property
    def ended(self) -> bool:
        return any(t.ended for t in self.turns)


def case_of(evaluation: ces_v1beta.Evaluation, prompts: dict[str, str]) -> Case:
    """The stored Evaluation as the engine's Case. Its evaluation expectations name
    EvaluationExpectation resources: the judge reads their prompts."""
    data = json_format.MessageToDict(ces_v1beta.Evaluation.pb(evaluation))
    case = read_evaluation(data, evaluation.name, "")
    for e in case.expectations:
        if e.kind == RUBRIC and isinstance(e.expected, str) and e.expected in prompts:
            e.expected = prompts[e.expected]
    return case


async def play(sessions, case: Case, session_name: str, aliases: dict[str, str], stopping: threading.Event,
               judge=None) -> CaseResult:
    """One case in a fresh session on this emulator; never raises for the agent's answers."""
    loop = asyncio.get_running_loop()
    return await asyncio.to_thread(run_in_session, lambda: EmulatorConversation(sessions, session_name, loop, stopping), case,
                                   judge=judge, aliases=aliases)
