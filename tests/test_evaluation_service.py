"""The emulator's v1beta EvaluationService through the official client, gRPC and REST, on a real
emulator over a real socket: evaluations in and out, RunEvaluation as a long-running operation
polled to the end, results with CES's fields, and verdicts that agree with `ces_nb.evaluate`
on the same goldens."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import ces_v1beta as b
from google.longrunning import operations_pb2
from google.protobuf import json_format

import ces_nb
from emulator_process import EmulatorProcess

HERE = Path(__file__).parent
ACME = HERE / "apps" / "cxas_project" / "cxas_app" / "Acme Support"
APP = "projects/eval-project/locations/us/apps/acme-support"
Outcome = b.EvaluationResult.Outcome


def golden(name: str, order: str = "A1234") -> dict:
    """A CES golden over three turns: the welcome event, an order lookup (a python tool), goodbye."""
    return {"displayName": name, "tags": ["orders"], "golden": {"turns": [
        {"steps": [{"userInput": {"variables": {"account_id": "9820598207", "customer_name": "Dana"}}},
                   {"userInput": {"event": {"event": "welcome"}}},
                   {"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": "Hi, this is Acme Support. How can I help you today?"}]}}}]},
        {"steps": [{"userInput": {"text": "Where is my order A1234?"}},
                   {"expectation": {"toolCall": {"tool": f"{APP}/tools/lookup_order", "args": {"order_id": order}}}},
                   {"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": "Your order has shipped and should arrive by 2026-04-18."}]}}}]},
        {"steps": [{"userInput": {"text": "Thanks, that's all."}},
                   {"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": "You're welcome. Goodbye!"}]}}},
                   {"expectation": {"toolCall": {"tool": f"{APP}/tools/end_session", "args": {}}}}]},
    ]}}


def handover(name: str) -> dict:
    """The returns golden as scrapi compiles it: each agent line its own agentResponse expectation."""
    says = ["Let me connect you with our returns specialist.", "Your return RMA-2291 is booked. Print the label from your email."]
    return {"displayName": name, "golden": {"turns": [{"steps": [
        {"userInput": {"text": "I want to return my blender"}},
        *({"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": text}]}}} for text in says),
        {"expectation": {"agentTransfer": {"targetAgent": f"{APP}/agents/returns-agent"}}},
        {"expectation": {"toolCall": {"id": "c1", "tool": f"{APP}/tools/start_return", "args": {"item": "blender"}}}},
        {"expectation": {"toolResponse": {"id": "c1", "tool": f"{APP}/tools/start_return", "response": {"reference": "RMA-2291"}}}},
    ]}]}}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    db = tmp_path_factory.mktemp("evaluations") / "store.db"
    process = EmulatorProcess("--app", str(ACME), "--db", str(db), rest_port=0)
    process.db = db
    yield process
    process.stop()


def client(emulator, transport: str) -> b.EvaluationServiceClient:
    if transport == "rest":
        return b.EvaluationServiceClient(transport="rest", client_options={"api_endpoint": emulator.rest_url},
                                         credentials=AnonymousCredentials())
    channel = grpc.insecure_channel(emulator.address)
    return b.EvaluationServiceClient(transport=b.EvaluationServiceClient.get_transport_class("grpc")(channel=channel))


def create(evaluations: b.EvaluationServiceClient, data: dict) -> b.Evaluation:
    return evaluations.create_evaluation(parent=APP, evaluation=b.Evaluation.from_json(json.dumps(data)))


def run(evaluations: b.EvaluationServiceClient, *names: str, **more) -> b.EvaluationRun:
    operation = evaluations.run_evaluation(request=b.RunEvaluationRequest(app=APP, evaluations=list(names), **more))
    assert operation.metadata.evaluation_run.startswith(f"{APP}/evaluationRuns/")  # named at once: scrapi waits for it
    response = operation.result(timeout=120)  # polls GetOperation until done
    assert operation.done() and response.evaluation_run == operation.metadata.evaluation_run
    return evaluations.get_evaluation_run(name=response.evaluation_run)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_evaluations_are_created_listed_read_updated_and_deleted(emulator, transport):
    evaluations = client(emulator, transport)
    name = f"crud-{transport}-{uuid.uuid4().hex[:6]}"
    made = create(evaluations, golden(name))
    assert made.name.startswith(f"{APP}/evaluations/") and made.display_name == name and made.create_time and made.etag
    assert name in [e.display_name for e in evaluations.list_evaluations(parent=APP)]
    got = evaluations.get_evaluation(name=made.name)
    assert len(got.golden.turns) == 3 and got.tags == ["orders"]
    changed = b.Evaluation(name=made.name, display_name=name, description="now described")
    updated = evaluations.update_evaluation(evaluation=changed, update_mask={"paths": ["description"]})
    assert updated.description == "now described" and len(updated.golden.turns) == 3  # the mask kept the golden
    evaluations.delete_evaluation(name=made.name)
    with pytest.raises(exceptions.NotFound, match="does not exist"):
        evaluations.get_evaluation(name=made.name)

    expectation = evaluations.create_evaluation_expectation(parent=APP, evaluation_expectation=b.EvaluationExpectation(
        display_name=f"polite-{transport}", llm_criteria={"prompt": "The agent is polite"}))
    listed = evaluations.list_evaluation_expectations(parent=APP)
    assert expectation.name in [e.name for e in listed]
    assert evaluations.get_evaluation_expectation(name=expectation.name).llm_criteria.prompt == "The agent is polite"


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_run_is_a_long_running_operation_with_results_in_ces_fields(emulator, transport):
    evaluations = client(emulator, transport)
    made = create(evaluations, golden(f"run-{transport}-{uuid.uuid4().hex[:6]}"))
    finished = run(evaluations, made.name)
    assert finished.state == b.EvaluationRun.EvaluationRunState.COMPLETED
    assert finished.evaluations == [made.name] and finished.evaluation_type == b.EvaluationRun.EvaluationType.GOLDEN
    assert (finished.progress.total_count, finished.progress.completed_count, finished.progress.passed_count) == (1, 1, 1)
    assert finished.evaluation_run_summaries[made.name].passed_count == 1

    results = list(evaluations.list_evaluation_results(parent=made.name))
    assert [r.name for r in results] == list(finished.evaluation_results)
    result = results[0]
    assert result.evaluation_status == Outcome.PASS and result.execution_state == b.EvaluationResult.ExecutionState.COMPLETED
    assert result.evaluation_run == finished.name and result.display_name == made.display_name
    turns = result.golden_result.turn_replay_results
    assert len(turns) == 3
    session = turns[0].conversation
    assert session.startswith(f"{APP}/conversations/evaluation-") and {t.conversation for t in turns} == {session}
    welcome = turns[0].expectation_outcome[0]
    assert welcome.outcome == Outcome.PASS and welcome.expectation.agent_response.chunks[0].text.startswith("Hi, this is Acme")
    assert welcome.observed_agent_response.chunks[0].text == "Hi, this is Acme Support. How can I help you today?"
    assert welcome.semantic_similarity_result.score == 4 and "offline" in welcome.semantic_similarity_result.label
    lookup = turns[1].expectation_outcome[0]
    assert lookup.expectation.tool_call.display_name == "lookup_order"  # output only: CES fills it in
    assert lookup.observed_tool_call.display_name == "lookup_order" and lookup.observed_tool_call.args == {"order_id": "A1234"}
    assert lookup.tool_invocation_result.parameter_correctness_score == 1.0 and lookup.tool_invocation_result.outcome == Outcome.PASS
    assert turns[1].tool_invocation_score == 1.0 and turns[1].overall_tool_invocation_result.outcome == Outcome.PASS
    assert turns[1].turn_latency.total_seconds() > 0
    goodbye = [o for o in turns[2].expectation_outcome if "tool_call" in o.expectation][0]
    assert goodbye.outcome == Outcome.PASS and goodbye.observed_tool_call.display_name == "end_session"
    assert evaluations.get_evaluation_result(name=result.name) == result
    assert finished.name in evaluations.get_evaluation(name=made.name).evaluation_runs

    # The conversation the run played is stored like any other.
    agents = b.AgentServiceClient(transport=b.AgentServiceClient.get_transport_class("grpc")(channel=grpc.insecure_channel(emulator.address)))
    assert len(agents.get_conversation(name=session).turns) >= 3


def _outcomes(result: b.EvaluationResult) -> list[tuple[int, str, str]]:
    """(turn, which expectation, outcome) of a CES result, in the golden's order."""
    out = []
    for t, turn in enumerate(result.golden_result.turn_replay_results):
        for o in turn.expectation_outcome:
            which = b.Evaluation.GoldenExpectation.pb(o.expectation).WhichOneof("condition") or "extra"
            out.append((t, which, Outcome(o.outcome).name))
    return out


def _engine_outcomes(case) -> list[tuple[int, str, str]]:
    kinds = {"agent_response": "agent_response", "tool_call": "tool_call", "end_session": "tool_call", "agent_transfer": "agent_transfer"}
    return [(int(e.at.split("turns[")[1].split("]")[0]), kinds[e.kind], "FAIL" if e.outcome == "ERROR" else e.outcome)
            for e in case.expectations if e.kind in kinds]


def test_verdicts_agree_with_ces_nb_evaluate_on_the_same_goldens(emulator):
    evaluations = client(emulator, "grpc")
    good, bad = golden(f"agree-{uuid.uuid4().hex[:6]}"), golden(f"agree-broken-{uuid.uuid4().hex[:6]}", order="B9999")
    returns = handover(f"agree-handover-{uuid.uuid4().hex[:6]}")
    names = [create(evaluations, g).name for g in (good, bad, returns)]
    finished = run(evaluations, *names)
    assert (finished.progress.passed_count, finished.progress.failed_count) == (2, 1)
    served = {r.display_name: r for n in names for r in evaluations.list_evaluation_results(parent=n)}

    connection = ces_nb.connect(endpoint=emulator.address, start=False)
    notebook = ces_nb.evaluate([copy.deepcopy(good), copy.deepcopy(bad), copy.deepcopy(returns)], client=connection,
                               app=APP, progress=False)
    by_name = {c.name: c for c in notebook.cases}
    for g in (good, bad, returns):
        case, result = by_name[g["displayName"]], served[g["displayName"]]
        assert Outcome(result.evaluation_status).name == case.outcome
        assert _outcomes(result) == _engine_outcomes(case), g["displayName"]
    # The broken golden fails in both, at the same expectation: turn 2's lookup_order call.
    failed = [x for x in _outcomes(served[bad["displayName"]]) if x[2] == "FAIL"]
    assert failed == [(1, "tool_call", "FAIL")]
    outcome = served[bad["displayName"]].golden_result.turn_replay_results[1].expectation_outcome[0]
    assert outcome.tool_invocation_result.parameter_correctness_score == 0.0 and "order_id" in outcome.tool_invocation_result.explanation
    assert served[bad["displayName"]].evaluation_status == Outcome.FAIL
    # The same returns golden in scrapi's YAML (one agent entry, two lines) gets the same verdict.
    yaml_run = ces_nb.evaluate(HERE / "apps" / "cxas_project" / "evals" / "goldens" / "returns.yaml", client=connection, app=APP, progress=False)
    assert [c.outcome for c in yaml_run.cases] == ["PASS"] == [Outcome(served[returns["displayName"]].evaluation_status).name]


def test_bad_input_gets_the_right_status_saying_what_to_do(emulator):
    evaluations = client(emulator, "grpc")
    with pytest.raises(exceptions.InvalidArgument, match="golden .* or a scenario"):
        evaluations.create_evaluation(parent=APP, evaluation=b.Evaluation(display_name="no inputs"))
    with pytest.raises(exceptions.NotFound, match="no-such-app"):
        create_in = golden("elsewhere")
        evaluations.create_evaluation(parent="projects/p/locations/us/apps/no-such-app", evaluation=b.Evaluation.from_json(json.dumps(create_in)))
    with pytest.raises(exceptions.InvalidArgument, match="parent must look like"):
        evaluations.list_evaluations(parent="acme-support")
    name = f"twice-{uuid.uuid4().hex[:6]}"
    made = create(evaluations, golden(name))
    with pytest.raises(exceptions.AlreadyExists, match="update that one"):
        create(evaluations, golden(name))
    with pytest.raises(exceptions.InvalidArgument, match="name the evaluations to run"):
        evaluations.run_evaluation(request=b.RunEvaluationRequest(app=APP))
    with pytest.raises(exceptions.NotFound, match="ListEvaluations"):
        evaluations.run_evaluation(request=b.RunEvaluationRequest(app=APP, evaluations=[f"{APP}/evaluations/nope"]))
    with pytest.raises(exceptions.InvalidArgument, match="run_count must be 1 to"):
        evaluations.run_evaluation(request=b.RunEvaluationRequest(app=APP, evaluations=[made.name], run_count=0))
    with pytest.raises(exceptions.InvalidArgument, match="update_mask path"):
        evaluations.update_evaluation(evaluation=b.Evaluation(name=made.name, display_name=name), update_mask={"paths": ["create_time"]})
    with pytest.raises(exceptions.NotFound, match="operation"):
        evaluations.get_operation(operations_pb2.GetOperationRequest(name="projects/p/locations/us/operations/nope"))

    # v1 defines no EvaluationService: UNIMPLEMENTED, naming where it is served.
    with grpc.insecure_channel(emulator.address) as channel:
        call = channel.unary_unary("/google.cloud.ces.v1.EvaluationService/ListEvaluations",
                                   request_serializer=b.ListEvaluationsRequest.serialize)
        with pytest.raises(grpc.RpcError) as caught:
            call(b.ListEvaluationsRequest(parent=APP))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED and "under v1beta" in caught.value.details()

    # Over REST a misspelt field is a 400 naming it.
    request = urllib.request.Request(f"{emulator.rest_url}/v1beta/{APP}/evaluations", method="POST",
                                     data=json.dumps({"displayName": "x", "goldn": {}}).encode(), headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=30)
    error = json.loads(http.value.read())["error"]
    assert http.value.code == 400 and error["status"] == "INVALID_ARGUMENT" and "goldn" in error["message"]


def test_runs_and_results_survive_a_restart_on_a_file_store(emulator, tmp_path):
    db = tmp_path / "kept.db"
    first = EmulatorProcess("--app", str(ACME), "--db", str(db), "--workers", "1")  # the store across a restart
    try:
        evaluations = client(first, "grpc")
        made = create(evaluations, golden("kept"))
        finished = run(evaluations, made.name)
    finally:
        first.stop()
    second = EmulatorProcess("--app", str(ACME), "--db", str(db), "--workers", "1", rest_port=0)
    try:
        evaluations = client(second, "rest")
        assert [e.name for e in evaluations.list_evaluations(parent=APP)] == [made.name]
        assert evaluations.get_evaluation_run(name=finished.name).state == b.EvaluationRun.EvaluationRunState.COMPLETED
        results = list(evaluations.list_evaluation_results(parent=made.name))
        assert [r.name for r in results] == list(finished.evaluation_results) and results[0].evaluation_status == Outcome.PASS
        operation = evaluations.get_operation(operations_pb2.GetOperationRequest(name=finished.operation))
        assert operation.done
    finally:
        second.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)  # three emulator starts and a run held 2 s a turn: about 35 s on 2 busy cores
def test_a_run_whose_emulator_was_killed_ends_in_error_instead_of_running_for_ever(tmp_path):
    """kill -9 mid-run: the next emulator on the store ends the run and its operation ABORTED, so
    a client polling the operation (scrapi's golden runner does) stops waiting, and is told why."""
    db = tmp_path / "killed.db"
    # each turn's commit held 2 s: the run's three turns are still playing when the kill comes
    first = EmulatorProcess("--app", str(ACME), "--db", str(db), "--workers", "2",
                            env={"CES_NB_FAILPOINT_COMMIT_DELAY_S": "2"})
    try:
        evaluations = client(first, "grpc")
        made = create(evaluations, golden("killed"))
        operation = evaluations.run_evaluation(request=b.RunEvaluationRequest(app=APP, evaluations=[made.name]))
        name = operation.metadata.evaluation_run
        # read through fresh connections, which reach either worker: a live run stays RUNNING
        for _ in range(8):
            assert client(first, "grpc").get_evaluation_run(name=name).state == b.EvaluationRun.EvaluationRunState.RUNNING
        first.kill()
    finally:
        first.stop()
    second = EmulatorProcess("--app", str(ACME), "--db", str(db), "--workers", "1", rest_port=0)
    try:
        evaluations = client(second, "rest")
        polled = evaluations.get_operation(operations_pb2.GetOperationRequest(name=operation.operation.name))
        assert polled.done and polled.error.code == grpc.StatusCode.ABORTED.value[0], polled
        assert "stopped before it finished" in polled.error.message and "RunEvaluation" in polled.error.message
        ended = evaluations.get_evaluation_run(name=name)
        assert ended.state == b.EvaluationRun.EvaluationRunState.ERROR and ended.error.message == polled.error.message
        evaluations.delete_evaluation_run(name=name)  # no longer "still running"
        assert run(evaluations, made.name).state == b.EvaluationRun.EvaluationRunState.COMPLETED  # and it runs again
    finally:
        second.stop()


def test_the_emulator_never_imports_the_notebook_side():
    code = ("import sys, ces_nb.emulator.server, ces_nb.emulator.services.evaluation\n"
            "print([m for m in sys.modules if m in ('ces_nb.session', 'ces_nb.client', 'ces_nb.magics') or m.startswith('ces_nb.render')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_reflection_lists_the_evaluation_service_and_operations(emulator):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(emulator.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    listed = {s.name for s in answer.list_services_response.service}
    assert {"google.cloud.ces.v1beta.EvaluationService", "google.longrunning.Operations"} <= listed
    assert "google.cloud.ces.v1.EvaluationService" not in listed


def test_a_scenario_runs_its_scripted_part_and_says_the_rest_is_not_evaluated(emulator):
    evaluations = client(emulator, "grpc")
    made = create(evaluations, {"displayName": f"scenario-{uuid.uuid4().hex[:6]}", "scenario": {
        "task": "Find out where order A1234 is", "maxTurns": 4,
        "scenarioExpectations": [{"agentResponse": {"role": "agent", "chunks": [{"text": "Your order has shipped"}]}}]}})
    finished = run(evaluations, made.name)
    assert finished.evaluation_type == b.EvaluationRun.EvaluationType.SCENARIO
    [result] = evaluations.list_evaluation_results(parent=made.name)
    assert result.evaluation_status == Outcome.SKIPPED and result.scenario_result.task == "Find out where order A1234 is"
    [expected] = result.scenario_result.expectation_outcomes
    assert expected.outcome == Outcome.SKIPPED and expected.expectation.agent_response.chunks[0].text == "Your order has shipped"
