"""google.cloud.ces.v1beta.EvaluationService, enough for golden runs (only v1beta defines it).

* Evaluations and EvaluationExpectations: create, get, list, update, delete.
* RunEvaluation: a long-running operation (operations.py). Its metadata names the
  EvaluationRun at once; the run plays each evaluation in a fresh session on this emulator and
  scores it with `ces_nb.evals` (evaluation_runs.py), writing one EvaluationResult per
  evaluation and run (evaluation_results.py), then completes the run and the operation.
* EvaluationRuns and EvaluationResults: get, list, delete.

Everything is stored (evaluation_store.py): a run's progress is visible to every process
sharing the store, and a SQLite store keeps evaluations and results across restarts. A run
plays in the process that started it, which holds a lease on it (evaluation_lease.py); if that
process dies, the next read of the run or its operation ends both in ERROR (ABORTED), saying so.

Handlers take and return ces_v1beta types."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import uuid

import grpc
from google.cloud import ces_v1, ces_v1beta
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

from .. import names
from ..errors import EmulatorError, clip, quote
from ..evaluation_results import evaluation_result
from ..evaluation_lease import LEASE_RENEW_S, Lease, holder_is_gone, lease_for_this_process
from ..evaluation_runs import case_of, play
from ..evaluation_store import EvaluationStore
from . import unary
from .agent import _page
from .operations import Operation, Operations

log = logging.getLogger("ces_nb.emulator")

SERVICE = "google.cloud.ces.v1beta.EvaluationService"
b = ces_v1beta
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CHILD = re.compile(r"^(projects/[^/]+/locations/[^/]+/apps/[^/]+)/(evaluations|evaluationExpectations|evaluationRuns)/([^/]+)$")
_RESULT = re.compile(r"^(projects/[^/]+/locations/[^/]+/apps/[^/]+/evaluations/[^/]+)/results/([^/]+)$")
MAX_RUN_COUNT = 10
RunState = b.EvaluationRun.EvaluationRunState


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


class EvaluationService:
    def __init__(self, registry, sessions, agents, store: EvaluationStore):
        self.registry = registry
        self.sessions = sessions  # SessionService: runs play their turns on its run_session
        self.agents = agents      # AgentService: the app's tools, as ces_nb.evaluate lists them
        self.store = store
        self.operations = Operations(store, settle=self._settled_operation)
        self._runs: set[asyncio.Task] = set()
        self._playing: set[str] = set()  # names of the runs this process plays
        self._stopping = threading.Event()

    # -- names -------------------------------------------------------------------------------

    def _app(self, parent: str, field: str = "parent") -> str:
        name = names.parse("app", parent, field)
        self.registry.runtime(name)  # NOT_FOUND for an app the emulator has not loaded
        return name.app_name

    @staticmethod
    def _child(name: str, collection: str, field: str = "name") -> str:
        m = _CHILD.match(name or "")
        if not m or m[2] != collection:
            raise EmulatorError.invalid_argument(
                f"{field} must look like 'projects/my-project/locations/us/apps/my-app/{collection}/ID'; got {quote(name) if name else 'nothing'}")
        return m[1]

    async def _get(self, kind: str, name: str, message_type, what: str):
        found = await self.store.get(kind, name, message_type)
        if found is None:
            raise EmulatorError.not_found(f"{what} {quote(name)} does not exist; list them with List{what.title().replace(' ', '')}s")
        return found

    # -- evaluations -------------------------------------------------------------------------

    async def create_evaluation(self, request: b.CreateEvaluationRequest, context) -> b.Evaluation:
        app = self._app(request.parent)
        evaluation = b.Evaluation.wrap(b.Evaluation.pb(request.evaluation).__deepcopy__())
        ident = request.evaluation_id or _new_id()
        if not _ID.match(ident):
            raise EmulatorError.invalid_argument(
                f"evaluation_id {quote(ident)} may use only lowercase letters, digits and '-' (at most 63), starting with a letter or digit")
        await self._check_evaluation(app, evaluation)
        evaluation.name = f"{app}/evaluations/{ident}"
        if await self.store.get("evaluation", evaluation.name, b.Evaluation) is not None:
            raise EmulatorError(grpc.StatusCode.ALREADY_EXISTS, f"evaluation {quote(evaluation.name)} already exists; update it instead")
        evaluation.create_time = evaluation.update_time = _now()
        evaluation.etag = _new_id()
        await self.store.put("evaluation", evaluation.name, app, evaluation)
        return evaluation

    async def _check_evaluation(self, app: str, evaluation: b.Evaluation, replacing: str = "") -> None:
        if "golden" not in evaluation and "scenario" not in evaluation:
            raise EmulatorError.invalid_argument(
                "evaluation needs its inputs: a golden (turns of steps: userInput, expectation) or a scenario (task, ...)")
        if not evaluation.display_name:
            raise EmulatorError.invalid_argument("evaluation.display_name is required (clients find evaluations by it)")
        for other in await self.store.list("evaluation", app, b.Evaluation):
            if other.display_name == evaluation.display_name and other.name != replacing:
                raise EmulatorError(grpc.StatusCode.ALREADY_EXISTS,
                                    f"an evaluation named {quote(evaluation.display_name)} already exists ({other.name}); "
                                    f"update that one, or pick another display_name")
        try:
            case_of(evaluation, {})
        except Exception as exc:  # EvalFileError: names the field and what it expected
            raise EmulatorError.invalid_argument(f"the evaluation can't be run: {clip(str(exc), 400)}") from None

    async def get_evaluation(self, request: b.GetEvaluationRequest, context) -> b.Evaluation:
        self._child(request.name, "evaluations")
        return await self._get("evaluation", request.name, b.Evaluation, "evaluation")

    async def list_evaluations(self, request: b.ListEvaluationsRequest, context) -> b.ListEvaluationsResponse:
        app = self._app(request.parent)
        page, token = _page(await self.store.list("evaluation", app, b.Evaluation), request.page_size, request.page_token)
        return b.ListEvaluationsResponse(evaluations=page, next_page_token=token)

    async def update_evaluation(self, request: b.UpdateEvaluationRequest, context) -> b.Evaluation:
        app = self._child(request.evaluation.name, "evaluations", "evaluation.name")
        current = await self._get("evaluation", request.evaluation.name, b.Evaluation, "evaluation")
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        updated = _merged(current, request.evaluation, paths, b.Evaluation,
                          ("display_name", "description", "tags", "golden", "scenario", "evaluation_metrics_threshold_override",
                           "evaluation_metrics_config_override"))
        await self._check_evaluation(app, updated, replacing=current.name)
        updated.update_time = _now()
        updated.etag = _new_id()
        await self.store.put("evaluation", updated.name, app, updated)
        return updated

    async def delete_evaluation(self, request: b.DeleteEvaluationRequest, context) -> empty_pb2.Empty:
        self._child(request.name, "evaluations")
        await self._get("evaluation", request.name, b.Evaluation, "evaluation")
        for result in await self.store.list("result", request.name, b.EvaluationResult):
            await self.store.delete("result", result.name)
        await self.store.delete("evaluation", request.name)
        return empty_pb2.Empty()

    # -- evaluation expectations ------------------------------------------------------------

    async def create_evaluation_expectation(self, request: b.CreateEvaluationExpectationRequest, context) -> b.EvaluationExpectation:
        app = self._app(request.parent)
        expectation = b.EvaluationExpectation.wrap(b.EvaluationExpectation.pb(request.evaluation_expectation).__deepcopy__())
        if not expectation.llm_criteria.prompt:
            raise EmulatorError.invalid_argument("evaluation_expectation.llm_criteria.prompt is required: the sentence a judge checks")
        ident = request.evaluation_expectation_id or _new_id()
        expectation.name = f"{app}/evaluationExpectations/{ident}"
        expectation.create_time = expectation.update_time = _now()
        expectation.etag = _new_id()
        await self.store.put("expectation", expectation.name, app, expectation)
        return expectation

    async def get_evaluation_expectation(self, request: b.GetEvaluationExpectationRequest, context) -> b.EvaluationExpectation:
        self._child(request.name, "evaluationExpectations")
        return await self._get("expectation", request.name, b.EvaluationExpectation, "evaluation expectation")

    async def list_evaluation_expectations(self, request: b.ListEvaluationExpectationsRequest, context) -> b.ListEvaluationExpectationsResponse:
        app = self._app(request.parent)
        page, token = _page(await self.store.list("expectation", app, b.EvaluationExpectation), request.page_size, request.page_token)
        return b.ListEvaluationExpectationsResponse(evaluation_expectations=page, next_page_token=token)

    async def update_evaluation_expectation(self, request: b.UpdateEvaluationExpectationRequest, context) -> b.EvaluationExpectation:
        app = self._child(request.evaluation_expectation.name, "evaluationExpectations", "evaluation_expectation.name")
        current = await self._get("expectation", request.evaluation_expectation.name, b.EvaluationExpectation, "evaluation expectation")
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        updated = _merged(current, request.evaluation_expectation, paths, b.EvaluationExpectation, ("display_name", "tags", "llm_criteria"))
        updated.update_time = _now()
        await self.store.put("expectation", updated.name, app, updated)
        return updated

    async def delete_evaluation_expectation(self, request: b.DeleteEvaluationExpectationRequest, context) -> empty_pb2.Empty:
        self._child(request.name, "evaluationExpectations")
        if not await self.store.delete("expectation", request.name):
            raise EmulatorError.not_found(f"evaluation expectation {quote(request.name)} does not exist")
        return empty_pb2.Empty()

    # -- runs --------------------------------------------------------------------------------

    async def run_evaluation(self, request: b.RunEvaluationRequest, context) -> operations_pb2.Operation:
        app = self._app(request.app, "app")
        if request.evaluation_dataset:
            raise EmulatorError.unimplemented("the emulator runs evaluations named in `evaluations`, not evaluation datasets")
        if not request.evaluations:
            raise EmulatorError.invalid_argument(
                f"name the evaluations to run in `evaluations` (e.g. '{app}/evaluations/ID'); ListEvaluations lists them")
        runs = request.run_count if "run_count" in request else 1
        if not 1 <= runs <= MAX_RUN_COUNT:
            raise EmulatorError.invalid_argument(f"run_count must be 1 to {MAX_RUN_COUNT}; got {runs}")
        evaluations = []
        for name in dict.fromkeys(request.evaluations):
            if self._child(name, "evaluations", "evaluations[]") != app:
                raise EmulatorError.invalid_argument(f"evaluation {quote(name)} is not in app {quote(app)}")
            evaluations.append(await self._get("evaluation", name, b.Evaluation, "evaluation"))
        project, location = app.split("/")[1], app.split("/")[3]
        run_id, created = _new_id(), _now()
        run = b.EvaluationRun(
            name=f"{app}/evaluationRuns/{run_id}", display_name=request.display_name or f"Run {created:%Y-%m-%d %H:%M:%S}",
            create_time=created, evaluations=[e.name for e in evaluations], state=RunState.RUNNING, run_count=runs,
            evaluation_type=_kind(evaluations), golden_run_method=request.golden_run_method or b.GoldenRunMethod.STABLE,
            progress=b.EvaluationRun.Progress(total_count=len(evaluations) * runs),
            operation=f"projects/{project}/locations/{location}/operations/{run_id}")
        if "config" in request:
            run.config = request.config
        metadata = b.RunEvaluationOperationMetadata(evaluations=run.evaluations, evaluation_run=run.name,
                                                    create_time=created, verb="run")
        operation = operations_pb2.Operation(name=run.operation, done=False)
        operation.metadata.Pack(b.RunEvaluationOperationMetadata.pb(metadata))
        self._playing.add(run.name)
        await self.store.put("lease", _lease_name(run.name), app, lease_for_this_process())
        await self.store.put("run", run.name, app, run)
        await self.store.put("operation", operation.name, f"projects/{project}/locations/{location}", operation)
        task = asyncio.get_running_loop().create_task(self._play(run, evaluations, metadata, operation), name=f"evaluation run {run_id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return operation

    async def _play(self, run: b.EvaluationRun, evaluations: list, metadata, operation: operations_pb2.Operation) -> None:
        app = run.name.split("/evaluationRuns/")[0]
        parent = operation.name.split("/operations/")[0]
        renewing = asyncio.get_running_loop().create_task(self._renew_lease(run.name, app))
        try:
            prompts = {e.name: e.llm_criteria.prompt for e in await self.store.list("expectation", app, b.EvaluationExpectation)}
            aliases, display_names = await self._names(app)
            for evaluation in evaluations:
                for n in range(run.run_count or 1):
                    session_id = f"evaluation-{run.name.rsplit('/', 1)[-1]}-{_new_id()[:8]}"
                    case = case_of(evaluation, prompts)
                    outcome = await play(self.sessions, case, f"{app}/sessions/{session_id}", aliases, self._stopping)
                    result = evaluation_result(outcome, evaluation, f"{evaluation.name}/results/{_new_id()}", run.name,
                                               f"{app}/conversations/{session_id}", _now(), display_names)
                    await self.store.put("result", result.name, evaluation.name, result)
                    run.evaluation_results.append(result.name)
                    _count(run, result)
                    await self.store.put("run", run.name, app, run)
                    await self._remember(evaluation.name, run.name, result)
            run.state = RunState.COMPLETED
            operation.response.Pack(b.RunEvaluationResponse.pb(b.RunEvaluationResponse(evaluation_run=run.name)))
        except asyncio.CancelledError:
            run.state = RunState.CANCELLED
            operation.error.code, operation.error.message = grpc.StatusCode.CANCELLED.value[0], "the emulator stopped during the run"
            raise
        except Exception as exc:  # a bug, not a failing golden: the run errs, saying why
            log.exception("evaluation run %s failed", run.name)
            run.state = RunState.ERROR
            run.error.code, run.error.message = grpc.StatusCode.INTERNAL.value[0], f"{type(exc).__name__}: {clip(str(exc), 300)}"
            operation.error.CopyFrom(b.EvaluationRun.pb(run).error)
        finally:
            renewing.cancel()
            metadata.end_time = _now()
            operation.done = True
            operation.metadata.Pack(b.RunEvaluationOperationMetadata.pb(metadata))
            await asyncio.shield(self._finish(run, app, operation, parent))

    async def _finish(self, run, app: str, operation, parent: str) -> None:
        await self.store.put("run", run.name, app, run)
        await self.store.put("operation", operation.name, parent, operation)
        await self.store.delete("lease", _lease_name(run.name))
        self._playing.discard(run.name)

    async def _renew_lease(self, run: str, app: str) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            await self.store.put("lease", _lease_name(run), app, lease_for_this_process())

    async def _settled(self, run: b.EvaluationRun) -> b.EvaluationRun:
        """`run`, or, when it is RUNNING but no process plays it any more (killed, restarted), the
        run ended in ERROR with its operation: never RUNNING for ever."""
        if run.state != RunState.RUNNING or run.name in self._playing:
            return run
        if not holder_is_gone(await self.store.get("lease", _lease_name(run.name), Lease)):
            return run
        app = run.name.split("/evaluationRuns/")[0]
        run.state = RunState.ERROR
        run.error.code = grpc.StatusCode.ABORTED.value[0]
        run.error.message = (
            f"the emulator process playing this run stopped before it finished (killed or restarted); the "
            f"{len(run.evaluation_results)} results it wrote are kept; run the evaluations again with RunEvaluation")
        log.warning("evaluation run %s: %s", run.name, run.error.message)
        operation = await self.store.get("operation", run.operation, Operation)
        if operation is not None and not operation.done:
            operation.done = True
            operation.error.CopyFrom(b.EvaluationRun.pb(run).error)
            await self.store.put("operation", operation.name, operation.name.split("/operations/")[0], operation)
        await self.store.put("run", run.name, app, run)
        await self.store.delete("lease", _lease_name(run.name))
        return run

    async def _settled_operation(self, operation: operations_pb2.Operation) -> operations_pb2.Operation:
        """An unfinished operation, after settling its run (see _settled)."""
        if operation.done:
            return operation
        metadata = b.RunEvaluationOperationMetadata.pb()()
        if not operation.metadata.Unpack(metadata) or not metadata.evaluation_run:
            return operation
        run = await self.store.get("run", metadata.evaluation_run, b.EvaluationRun)
        if run is None or (await self._settled(run)).state == RunState.RUNNING:
            return operation
        return await self.store.get("operation", operation.name, Operation) or operation

    async def _names(self, app: str) -> tuple[dict[str, str], dict[str, str]]:
        """(tool ids -> display names, as `ces_nb.evaluate` reads them from ListTools;
        tool and agent resource names -> display names)."""
        tools = (await self.agents.list_tools(ces_v1.ListToolsRequest(parent=app, page_size=1000), None)).tools
        agents = (await self.agents.list_agents(ces_v1.ListAgentsRequest(parent=app, page_size=1000), None)).agents
        aliases = {t.name.rsplit("/", 1)[-1]: t.display_name for t in tools if t.display_name}
        return aliases, {x.name: x.display_name for x in [*tools, *agents] if x.display_name}

    async def _remember(self, evaluation: str, run: str, result: b.EvaluationResult) -> None:
        current = await self.store.get("evaluation", evaluation, b.Evaluation)
        if current is None:  # deleted during the run
            return
        if run not in current.evaluation_runs:
            current.evaluation_runs.append(run)
        current.last_completed_result = result
        await self.store.put("evaluation", evaluation, evaluation.split("/evaluations/")[0], current)

    async def get_evaluation_run(self, request: b.GetEvaluationRunRequest, context) -> b.EvaluationRun:
        self._child(request.name, "evaluationRuns")
        return await self._settled(await self._get("run", request.name, b.EvaluationRun, "evaluation run"))

    async def list_evaluation_runs(self, request: b.ListEvaluationRunsRequest, context) -> b.ListEvaluationRunsResponse:
        app = self._app(request.parent)
        page, token = _page(await self.store.list("run", app, b.EvaluationRun), request.page_size, request.page_token)
        page = [await self._settled(run) for run in page]
        return b.ListEvaluationRunsResponse(evaluation_runs=page, next_page_token=token)

    async def delete_evaluation_run(self, request: b.DeleteEvaluationRunRequest, context) -> operations_pb2.Operation:
        self._child(request.name, "evaluationRuns")
        run = await self._settled(await self._get("run", request.name, b.EvaluationRun, "evaluation run"))
        if run.state == RunState.RUNNING:
            raise EmulatorError.failed_precondition(f"evaluation run {quote(run.name)} is still running; delete it when it is done")
        await self.store.delete("run", run.name)
        done = operations_pb2.Operation(name=f"{run.operation}-delete", done=True)
        done.response.Pack(empty_pb2.Empty())
        return done

    # -- results -----------------------------------------------------------------------------

    async def get_evaluation_result(self, request: b.GetEvaluationResultRequest, context) -> b.EvaluationResult:
        if not _RESULT.match(request.name or ""):
            raise EmulatorError.invalid_argument(
                f"name must look like 'projects/p/locations/us/apps/my-app/evaluations/ID/results/ID'; got {quote(request.name)}")
        return await self._get("result", request.name, b.EvaluationResult, "evaluation result")

    async def list_evaluation_results(self, request: b.ListEvaluationResultsRequest, context) -> b.ListEvaluationResultsResponse:
        self._child(request.parent, "evaluations", "parent")
        await self._get("evaluation", request.parent, b.Evaluation, "evaluation")
        results = await self.store.list("result", request.parent, b.EvaluationResult)
        page, token = _page(results, request.page_size, request.page_token)
        return b.ListEvaluationResultsResponse(evaluation_results=page, next_page_token=token)

    async def delete_evaluation_result(self, request: b.DeleteEvaluationResultRequest, context) -> empty_pb2.Empty:
        if not await self.store.delete("result", request.name):
            raise EmulatorError.not_found(f"evaluation result {quote(request.name)} does not exist")
        return empty_pb2.Empty()

    # -- operations, also under this service's REST routes -------------------------------------

    async def get_operation(self, request, context):
        return await self.operations.get_operation(request, context)

    async def list_operations(self, request, context):
        return await self.operations.list_operations(request, context)

    async def delete_operation(self, request, context):
        return await self.operations.delete_operation(request, context)

    async def cancel_operation(self, request, context):
        return await self.operations.cancel_operation(request, context)

    async def close(self) -> None:
        """Stops runs still playing (they end CANCELLED in the store)."""
        self._stopping.set()
        for task in list(self._runs):
            task.cancel()
        for task in list(self._runs):
            try:
                await task
            except BaseException:  # noqa: BLE001 - stopping must not fail
                pass

    def handler(self) -> grpc.GenericRpcHandler:
        from ..reflection import SERVED_IN

        table = {method: unary(getattr(self, _snake(method)), request_type, response_type)
                 for method, request_type, response_type, *_ in SERVED_IN["google.cloud.ces.v1beta"]["EvaluationService"]}
        return grpc.method_handlers_generic_handler(SERVICE, table)


def _lease_name(run: str) -> str:
    """The lease's own key in the store (resources are keyed by name alone)."""
    return f"{run}/lease"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _merged(current, update, paths: list[str], message_type, fields: tuple[str, ...]):
    """`current` with `update`'s fields: those in the update mask, or all that it may change."""
    out = message_type.pb(current).__deepcopy__()
    new = message_type.pb(update)
    for path in paths or fields:
        top = path.split(".")[0]
        if top not in fields:
            raise EmulatorError.invalid_argument(f"update_mask path {quote(path)} can't be updated; the fields are {', '.join(fields)}")
    if paths:
        field_mask_pb2.FieldMask(paths=paths).MergeMessage(new, out, replace_message_field=True, replace_repeated_field=True)
    else:
        for name in fields:
            out.ClearField(name)
        for field, value in new.ListFields():
            if field.name in fields:
                if field.message_type is not None and not field.is_repeated:
                    getattr(out, field.name).CopyFrom(value)
                elif field.is_repeated:
                    getattr(out, field.name).extend(value)
                else:
                    setattr(out, field.name, value)
    return message_type.wrap(out)


def _kind(evaluations: list) -> int:
    kinds = {"scenario" if "scenario" in e else "golden" for e in evaluations}
    Type = b.EvaluationRun.EvaluationType
    return Type.MIXED if len(kinds) > 1 else Type.SCENARIO if kinds == {"scenario"} else Type.GOLDEN


def _count(run: b.EvaluationRun, result: b.EvaluationResult) -> None:
    pb = b.EvaluationRun.pb(run)
    progress = pb.progress
    progress.completed_count += 1
    summary = pb.evaluation_run_summaries[result.name.split("/results/")[0]]
    if result.execution_state == b.EvaluationResult.ExecutionState.ERROR:
        progress.error_count += 1
        summary.error_count += 1
    elif result.evaluation_status == b.EvaluationResult.Outcome.PASS:
        progress.passed_count += 1
        summary.passed_count += 1
    elif result.evaluation_status == b.EvaluationResult.Outcome.FAIL:
        progress.failed_count += 1
        summary.failed_count += 1
