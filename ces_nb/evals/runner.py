"""evaluate(): each case in a fresh session against any connection (emulator or real CES), in
parallel, with a tqdm bar; the verdicts are an EvalRun."""

from __future__ import annotations

import copy
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .cases import RUBRIC, SCENARIO_CASE, TOOL_CALL, TOOL_TEST, Case, MockAnswer, Thresholds
from .judges import TextSimilarityJudge
from .observe import observe
from .results import CaseResult
from .scoring import score_case_rubrics, score_step, score_tool_test, skipped

MAX_TOOL_ROUNDS = 20


def evaluate(paths_or_objects: Any, client=None, app: str | None = None, parallel: int = 1, judge=None,
             thresholds: Thresholds | None = None, progress: bool | None = None, session_prefix: str = "eval"):
    """Run goldens, turn evals, tool tests and CES Evaluations; return an EvalRun.

    * `paths_or_objects`: files or folders (.yaml/.yml/.json), parsed data or `Case`s, in any mix.
    * `client`: a `ces_nb.connect(...)` client (default: the local emulator); `app`: an app id or
      full name (default: the client's).
    * `parallel`: cases run at once, each in its own session.
    * `judge`: for semantic matching and natural-language expectations (default: the offline
      `TextSimilarityJudge`; `GeminiJudge()` with credentials).
    * `progress`: the tqdm bar (default: on when stderr is a terminal or in a notebook)."""
    from .loading import load
    from .run import EvalRun

    cases, file_thresholds = load(paths_or_objects)
    if client is None:
        from ..client import connect

        client = connect()
    app_name = client.resolve_app(app)
    _check_app(client, app_name)
    judge = judge or TextSimilarityJudge()
    base = (file_thresholds or Thresholds()).merged(thresholds)
    aliases = _tool_aliases(client, app_name)
    started = time.perf_counter()
    bar = _bar(len(cases), progress)

    def one(numbered: tuple[int, Case]) -> CaseResult:
        n, case = numbered
        try:
            return run_case(client, app_name, case, judge=judge, thresholds=base.merged(case.thresholds),
                            session_id=f"{session_prefix}-{n:04d}-{_slug(case.name)}-{_stamp()}", aliases=aliases)
        finally:
            if bar is not None:
                bar.update(1)

    try:
        numbered = list(enumerate(cases, 1))
        if parallel <= 1:
            results = [one(x) for x in numbered]
        else:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                results = list(pool.map(one, numbered))
    finally:
        if bar is not None:
            bar.close()
    meta = {"target": client.target, "emulator": client.emulator, "app": app_name, "parallel": parallel,
            "judge": judge.name, "wall_s": round(time.perf_counter() - started, 3)}
    return EvalRun(results, meta)


def _bar(total: int, progress: bool | None):
    import sys

    if progress is None:
        progress = sys.stderr.isatty() or _in_notebook()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit="case")


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return type(get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:
        return False


_counter = iter(range(1, 1 << 62))


def _stamp() -> str:
    return f"{int(time.time() * 1000) % 10**8:08d}{next(_counter) % 1000:03d}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:30] or "case"


def _check_app(client, app: str) -> None:
    """An app that is not there fails the run once, up front, not each case with the same error."""
    import grpc

    from ..errors import _code, explain

    try:
        client.agents.get_app(name=app)
    except Exception as exc:
        if _code(exc) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            raise explain(exc, target=client.target, app=app) from None
        # anything else (e.g. a server that does not serve GetApp): let the cases say what goes wrong


def _tool_aliases(client, app: str) -> dict[str, str]:
    """Tool resource ids -> display names, so a CES Evaluation naming tools by resource matches
    calls the app reports by display name."""
    try:
        tools = client.tools_of(app)
    except Exception:
        return {}
    return {key.rsplit("/", 1)[-1]: tool.display_name for key, tool in tools.items() if getattr(tool, "display_name", "")}


def _aliased(case: Case, aliases: dict[str, str]) -> Case:
    renamed = [e.expected["tool"] for s in case.steps for e in s.expectations
               if e.kind == TOOL_CALL and isinstance(e.expected, dict) and e.expected.get("tool") in aliases
               and aliases[e.expected["tool"]] != e.expected["tool"]]
    if not renamed and not any(m.tool in aliases and aliases[m.tool] != m.tool for s in case.steps for m in s.mocks):
        return case
    case = copy.deepcopy(case)
    for step in case.steps:
        for e in step.expectations:
            if e.kind == TOOL_CALL and isinstance(e.expected, dict) and e.expected.get("tool"):
                e.expected["tool"] = aliases.get(e.expected["tool"], e.expected["tool"])
        for m in step.mocks:
            m.tool = aliases.get(m.tool, m.tool)
    return case


def run_case(client, app: str, case: Case, *, judge=None, thresholds: Thresholds | None = None,
             session_id: str | None = None, aliases: dict[str, str] | None = None) -> CaseResult:
    """One case in a fresh session: its CaseResult (never raises for the server's answers)."""
    if case.kind == TOOL_TEST:
        result = _new_result(case)
        try:
            _run_tool_test(client, app, _aliased(case, aliases or {}), result)
        except Exception as exc:  # the server failed the call: the case errs, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"
        return result.decide()

    def session():
        return client.session(app=app, session_id=session_id or f"eval-{_slug(case.name)}-{_stamp()}")

    return run_in_session(session, case, judge=judge, thresholds=thresholds, aliases=aliases)


def run_in_session(session, case: Case, *, judge=None, thresholds: Thresholds | None = None,
                   aliases: dict[str, str] | None = None) -> CaseResult:
    """One conversation case (golden, turn eval, scenario) in the fresh session `session()` makes;
    its CaseResult (never raises for the server's answers).

    The session is anything with `name`, `auto_answer`, `pending` ({call id: ToolCall}), `ended`,
    `send(**inputs) -> Turn` and `respond(answers, how=...) -> Turn`: a notebook `Session`, or
    the emulator's EvaluationService playing turns on its own SessionService. Both are scored
    here, so the notebook, the CLI and the service agree on every verdict."""
    result = _new_result(case)
    try:
        _run_conversation(session(), _aliased(case, aliases or {}), result, judge or TextSimilarityJudge(),
                          thresholds or Thresholds())
    except Exception as exc:  # the server failed the turn: the case errs, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
    return result.decide()


def _new_result(case: Case) -> CaseResult:
    return CaseResult(key=case.key, name=case.name, kind=case.kind, source=case.source, tags=list(case.tags),
                      description=case.description)


def _run_tool_test(client, app: str, case: Case, result: CaseResult) -> None:
    from google.cloud import ces_v1
    from google.protobuf import json_format

    request = ces_v1.ExecuteToolRequest(parent=app, tool=client.tool_name(app, case.tool), args=case.args)
    if case.variables:
        request.variables = case.variables
    if case.context:
        request.context = case.context
    started = time.perf_counter()
    response = client.tools.execute_tool(request=request)
    result.latency_ms = (time.perf_counter() - started) * 1000
    pb = type(response).pb(response)
    body = json_format.MessageToDict(pb.response) if pb.HasField("response") else {}
    variables = json_format.MessageToDict(pb.variables) if pb.HasField("variables") else {}
    result.spans.append(["tool_test", result.latency_ms])
    for row in score_tool_test(case, body, variables):
        row.latency_ms = result.latency_ms
        result.expectations.append(row)
    result.notes.append(f"ExecuteTool {case.tool}: {json.dumps(body, sort_keys=True, default=str)}")


def _run_conversation(session, case: Case, result: CaseResult, judge, thresholds: Thresholds) -> None:
    session.auto_answer = False  # this runner answers client tools, from the golden
    result.session = session.name
    variables = dict(case.variables)
    live = []  # the Turns, for the rubric judge's transcript
    for number, step in enumerate(case.steps, 1):
        inputs = dict(step.inputs)
        if number == 1 and variables:
            inputs["variables"] = {**variables, **inputs.get("variables", {})}
        if not inputs:
            result.step_turns.append([])
            continue
        turns = [session.send(**inputs)]
        mocks = list(step.mocks)
        rounds = 0
        while session.pending and rounds < MAX_TOOL_ROUNDS:
            answers = {cid: _answer(call, mocks, result, number) for cid, call in session.pending.items()}
            turns.append(session.respond(answers, how="mock"))
            rounds += 1
        first = len(result.turns)
        live.extend(turns)
        result.turns.extend(t.to_dict() for t in turns)
        result.step_turns.append(list(range(first, len(result.turns))))
        seen = observe(turns)
        result.spans.extend([k, ms] for k, ms in seen.spans)
        for row in score_step(step, seen, judge, step.thresholds and thresholds.merged(step.thresholds) or thresholds, variables):
            row.turn, row.latency_ms = number, seen.latency_ms
            result.expectations.append(row)
        variables.update(step.inputs.get("variables", {}))
        if session.ended:
            rest = case.steps[number:]
            for later, s in enumerate(rest, number + 1):
                for e in s.expectations:
                    row = skipped(e, "the session ended before this turn")
                    row.outcome, row.turn = "FAIL", later
                    result.expectations.append(row)
            break
    if case.kind == SCENARIO_CASE:
        for e in case.expectations:
            result.expectations.append(skipped(e, e.note))
    if any(e.kind == RUBRIC for e in case.expectations) or any(e.kind == RUBRIC for s in case.steps for e in s.expectations):
        conversation = "\n".join(_line(t) for t in live)
        result.expectations.extend(score_case_rubrics(case, conversation, judge))
    latencies = [ms for kind, ms in result.spans if kind == "turn"]
    result.latency_ms = sum(latencies) if latencies else None


def _answer(call, mocks: list[MockAnswer], result: CaseResult, number: int) -> dict:
    """The golden's answer for a client tool call: the first unused one for this tool."""
    for m in mocks:
        if m.tool == call.name or m.tool.rsplit("/", 1)[-1] == call.tool.rsplit("/", 1)[-1]:
            mocks.remove(m)
            return m.response
    result.notes.append(f"turn {number}: the golden has no answer for client tool {call.name}; answered {{}}")
    return {}


def _line(turn) -> str:
    user = turn.user_text
    calls = ", ".join(f"{c.name}({c.args})" for c in turn.tool_calls)
    return f"User: {user}\nAgent: {turn.text}" + (f"\nTool calls: {calls}" if calls else "")


__all__ = ["evaluate", "run_case", "run_in_session"]
