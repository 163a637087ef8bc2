"""Answering client tool calls: Python handlers, breakpoints, mocks, and the call log.

A session asks `ClientTools.propose(call)` for each tool call it receives. The
answer comes from a mock whose args pattern matches, else from a registered
handler (sync or async; an exception becomes `{"error": ...}`), else nobody:
the call waits for a form or `session.respond`. A breakpoint on the tool keeps
the proposal for a person to check and send.
"""

from __future__ import annotations

import inspect
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .model import ToolCall

HOW = ("form", "handler", "mock", "fake", "manual", "server")
UNMATCHED = ("PASS_THROUGH", "FAIL")


@dataclass
class Mock:
    """A mocked tool call: `args` is a pattern (strings are full-match regexes, objects match
    the keys they name, other values must be equal); None matches any call."""

    tool: str
    response: dict
    args: dict | None = None

    def matches(self, call: ToolCall) -> bool:
        from .emulator.mocks import args_match  # the same matching the emulator's ExecuteTool uses

        return same_tool(self.tool, call) and (self.args is None or args_match(self.args, call.args))


@dataclass
class Proposal:
    response: dict | None
    how: str | None
    hold: bool = False  # a breakpoint: show it, don't send it
    error: str | None = None


@dataclass
class CallRecord:
    """One row of the tool-call log."""

    turn: int
    id: str
    tool: str
    args: dict
    received: float = field(default_factory=time.perf_counter)
    response: dict | None = None
    how: str | None = None
    answered: float | None = None

    @property
    def latency_ms(self) -> float | None:
        return None if self.answered is None else (self.answered - self.received) * 1e3


def same_tool(name: str, call: ToolCall) -> bool:
    short = name.rsplit("/", 1)[-1]
    return short in (call.name, call.display_name, call.tool.rsplit("/", 1)[-1]) or name == call.tool


class ClientTools:
    """Handlers, breakpoints and mocks for client tool calls, and the log of every call."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.breakpoints: set[str] = set()
        self.mocks: list[Mock] = []
        self.unmatched = "PASS_THROUGH"
        self.records: dict[str, CallRecord] = {}
        self.proposals: dict[str, Proposal] = {}

    # -- registration --------------------------------------------------------------

    def handler(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: `@tools.handler("select_seat")` answers calls to select_seat with fn(**args)."""

        def register(fn: Callable) -> Callable:
            if not callable(fn):
                raise TypeError(f"client_tool({name!r}) decorates a function, got {type(fn).__name__}")
            self.handlers[name] = fn
            return fn

        return register

    def break_on(self, name: str) -> None:
        self.breakpoints.add(name)

    def clear_break(self, name: str | None = None) -> None:
        if name is None:
            self.breakpoints.clear()
        else:
            self.breakpoints.discard(name)

    def mock(self, tool: str, response: dict, args: dict | None = None, unmatched: str | None = None) -> Mock:
        if not isinstance(response, dict):
            raise TypeError(f"a mock's response is a JSON object (dict), got {type(response).__name__}")
        if unmatched is not None:
            unmatched = unmatched.upper().replace("-", "_")
            if unmatched not in UNMATCHED:
                raise ValueError(f"unmatched must be PASS_THROUGH or FAIL, got {unmatched!r}")
            self.unmatched = unmatched
        mock = Mock(tool, dict(response), dict(args) if args is not None else None)
        self.mocks.append(mock)
        return mock

    def mock_config(self):
        """The MockConfig proto for ToolService.ExecuteTool."""
        from google.cloud import ces_v1

        return ces_v1.MockConfig(
            mocked_tool_calls=[
                ces_v1.MockedToolCall(tool_id=m.tool, expected_args_pattern=m.args or {}, mock_response=m.response)
                for m in self.mocks
            ],
            unmatched_tool_call_behavior=ces_v1.MockConfig.UnmatchedToolCallBehavior[self.unmatched],
        )

    # -- answering -----------------------------------------------------------------

    def received(self, turn_index: int, call: ToolCall) -> None:
        self.records.setdefault(call.id, CallRecord(turn_index, call.id, call.name, dict(call.args)))

    def propose(self, call: ToolCall) -> Proposal:
        """What would answer this call, and whether a breakpoint holds it."""
        hold = any(same_tool(b, call) for b in self.breakpoints)
        proposal = Proposal(None, None, hold)
        mock = next((m for m in self.mocks if m.matches(call)), None)
        if mock is not None:
            proposal.response, proposal.how = dict(mock.response), "mock"
        elif self.unmatched == "FAIL" and any(same_tool(m.tool, call) for m in self.mocks):
            # Mocked tool, unmatched args, FAIL: the agent hears that no mock fits.
            proposal.how = "mock"
            proposal.error = f"no mock for {call.name} matches args {call.args}"
            proposal.response = {"error": proposal.error}
        else:
            handler = next((fn for name, fn in self.handlers.items() if same_tool(name, call)), None)
            if handler is not None:
                proposal.how = "handler"
                try:
                    result = run_handler(handler, call.args)
                    proposal.response = result if isinstance(result, dict) else {"result": result}
                except Exception as exc:  # the agent hears about it; the kernel lives on
                    proposal.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    proposal.response = {"error": proposal.error}
        self.proposals[call.id] = proposal
        return proposal

    def answered(self, call_id: str, response: dict, how: str) -> None:
        record = self.records.get(call_id)
        if record is not None:
            record.response, record.how, record.answered = response, how, time.perf_counter()
        self.proposals.pop(call_id, None)

    def frame(self, server_calls: list[dict] | None = None):
        """The log as a DataFrame: turn, id, tool, args, response, how, latency_ms."""
        import pandas as pd

        rows = [
            {"turn": r.turn, "id": r.id, "tool": r.tool, "args": r.args, "response": r.response, "how": r.how,
             "latency_ms": r.latency_ms}
            for r in self.records.values()
        ]
        rows.extend(server_calls or [])
        columns = ["turn", "id", "tool", "args", "response", "how", "latency_ms"]
        return pd.DataFrame(rows, columns=columns).sort_values(["turn"], kind="stable").reset_index(drop=True)


def run_handler(fn: Callable[..., Any], args: dict) -> Any:
    """Call a handler with the call's args; an async one is run to completion."""
    result = fn(**args)
    if inspect.isawaitable(result):
        from .coroutines import run_sync

        return run_sync(result)
    return result
