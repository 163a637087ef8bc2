"""evaluate(): each case in a fresh session against any connection (emulator or real CES), in
parallel, with a tqdm bar; the verdicts are an EvalRun."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .cases import TOOL_TEST, Case, Thresholds
from .conversation import aliased, new_result, run_in_session
from .judges import TextSimilarityJudge
from .results import CaseResult
from .scoring import score_tool_test



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


def run_case(client, app: str, case: Case, *, judge=None, thresholds: Thresholds | None = None,
             session_id: str | None = None, aliases: dict[str, str] | None = None) -> CaseResult:
    """One case in a fresh session: its CaseResult (never raises for the server's answers)."""
    if case.kind == TOOL_TEST:
        result = new_result(case)
        try:
            _run_tool_test(client, app, aliased(case, aliases or {}), result)
        except Exception as exc:  # the server failed the call: the case errs, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"
        return result.decide()

    def session():
        return client.session(app=app, session_id=session_id or f"eval-{_slug(case.name)}-{_stamp()}")

    return run_in_session(session, case, judge=judge, thresholds=thresholds, aliases=aliases)


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


__all__ = ["evaluate", "run_case", "run_in_session"]  # run_in_session: from conversation.py
