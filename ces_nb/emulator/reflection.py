"""The services the emulator serves, under each CES API version, and their descriptors for
gRPC server reflection.

The proto-plus types register their messages in the default descriptor pool,
but not the services (those live only in the generated clients). We add a
small synthetic file declaring the services the emulator serves, built from
the method table, so grpcurl and other generic tools can list and call them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

from google.cloud import ces_v1, ces_v1beta

_EMPTY = ".google.protobuf.Empty"

# service -> [(method, request type, response type, client streaming, server streaming)]
SERVED = {
    "SessionService": [
        ("RunSession", ces_v1.RunSessionRequest, ces_v1.RunSessionResponse, False, False),
        ("StreamRunSession", ces_v1.RunSessionRequest, ces_v1.RunSessionResponse, False, True),
        ("BidiRunSession", ces_v1.BidiSessionClientMessage, ces_v1.BidiSessionServerMessage, True, True),
    ],
    "AgentService": [
        ("ListApps", ces_v1.ListAppsRequest, ces_v1.ListAppsResponse, False, False),
        ("GetApp", ces_v1.GetAppRequest, ces_v1.App, False, False),
        ("ListAgents", ces_v1.ListAgentsRequest, ces_v1.ListAgentsResponse, False, False),
        ("GetAgent", ces_v1.GetAgentRequest, ces_v1.Agent, False, False),
        ("ListTools", ces_v1.ListToolsRequest, ces_v1.ListToolsResponse, False, False),
        ("GetTool", ces_v1.GetToolRequest, ces_v1.Tool, False, False),
        ("ListToolsets", ces_v1.ListToolsetsRequest, ces_v1.ListToolsetsResponse, False, False),
        ("GetToolset", ces_v1.GetToolsetRequest, ces_v1.Toolset, False, False),
        ("ListGuardrails", ces_v1.ListGuardrailsRequest, ces_v1.ListGuardrailsResponse, False, False),
        ("GetGuardrail", ces_v1.GetGuardrailRequest, ces_v1.Guardrail, False, False),
        ("ListExamples", ces_v1.ListExamplesRequest, ces_v1.ListExamplesResponse, False, False),
        ("GetExample", ces_v1.GetExampleRequest, ces_v1.Example, False, False),
        ("ListConversations", ces_v1.ListConversationsRequest, ces_v1.ListConversationsResponse, False, False),
        ("GetConversation", ces_v1.GetConversationRequest, ces_v1.Conversation, False, False),
        ("DeleteConversation", ces_v1.DeleteConversationRequest, None, False, False),
    ],
    "ToolService": [
        ("ExecuteTool", ces_v1.ExecuteToolRequest, ces_v1.ExecuteToolResponse, False, False),
    ],
}

def _evaluation_methods() -> list[tuple]:
    from .services.operations import Empty, Operation

    b = ces_v1beta
    return [
        ("CreateEvaluation", b.CreateEvaluationRequest, b.Evaluation, False, False),
        ("GetEvaluation", b.GetEvaluationRequest, b.Evaluation, False, False),
        ("ListEvaluations", b.ListEvaluationsRequest, b.ListEvaluationsResponse, False, False),
        ("UpdateEvaluation", b.UpdateEvaluationRequest, b.Evaluation, False, False),
        ("DeleteEvaluation", b.DeleteEvaluationRequest, Empty, False, False),
        ("CreateEvaluationExpectation", b.CreateEvaluationExpectationRequest, b.EvaluationExpectation, False, False),
        ("GetEvaluationExpectation", b.GetEvaluationExpectationRequest, b.EvaluationExpectation, False, False),
        ("ListEvaluationExpectations", b.ListEvaluationExpectationsRequest, b.ListEvaluationExpectationsResponse, False, False),
        ("UpdateEvaluationExpectation", b.UpdateEvaluationExpectationRequest, b.EvaluationExpectation, False, False),
        ("DeleteEvaluationExpectation", b.DeleteEvaluationExpectationRequest, Empty, False, False),
        ("RunEvaluation", b.RunEvaluationRequest, Operation, False, False),
        ("GetEvaluationRun", b.GetEvaluationRunRequest, b.EvaluationRun, False, False),
        ("ListEvaluationRuns", b.ListEvaluationRunsRequest, b.ListEvaluationRunsResponse, False, False),
        ("DeleteEvaluationRun", b.DeleteEvaluationRunRequest, Operation, False, False),
        ("GetEvaluationResult", b.GetEvaluationResultRequest, b.EvaluationResult, False, False),
        ("ListEvaluationResults", b.ListEvaluationResultsRequest, b.ListEvaluationResultsResponse, False, False),
        ("DeleteEvaluationResult", b.DeleteEvaluationResultRequest, Empty, False, False),
    ]


def _operation_methods() -> list[tuple]:
    from .services import operations as o

    return [
        ("GetOperation", o.GetOperationRequest, o.Operation, False, False),
        ("ListOperations", o.ListOperationsRequest, o.ListOperationsResponse, False, False),
        ("DeleteOperation", o.DeleteOperationRequest, o.Empty, False, False),
        ("CancelOperation", o.CancelOperationRequest, o.Empty, False, False),
    ]


# Services only some versions define (the EvaluationService is v1beta's alone): their handlers
# take and return that version's types, and are served under it only.
SERVED_IN = {"google.cloud.ces.v1beta": {"EvaluationService": _evaluation_methods()}}
# google.longrunning.Operations, for the long-running calls of these services. Over gRPC it is
# its own service; over REST its routes belong to each such service's transport
# (GET /v1beta/{name=projects/*/locations/*/operations/*}).
OPERATIONS = _operation_methods()
LONG_RUNNING = {"EvaluationService"}
OPERATIONS_SERVICE = "google.longrunning.Operations"

# The handlers' own version: they take and return ces_v1 types.
PACKAGE = "google.cloud.ces.v1"
# Every version served, each with its generated types. Their messages are the same field for
# field (same numbers, same types: v1beta's App only adds evaluation fields), so a v1beta call
# runs the v1 handler on the same bytes (versions.py), and REST converts through the wire format.
API_VERSIONS = {"google.cloud.ces.v1": ces_v1, "google.cloud.ces.v1beta": ces_v1beta}


def served(package: str) -> dict[str, list[tuple]]:
    """SERVED with the request and response types of `package`'s version, and the services
    only that version defines."""
    types = API_VERSIONS[package]
    table = {service: [(m, getattr(types, req.__name__), None if resp is None else getattr(types, resp.__name__), cs, ss)
                       for m, req, resp, cs, ss in methods]
             for service, methods in SERVED.items()}
    table.update(SERVED_IN.get(package, {}))
    return table


def rest_methods(package: str, service: str) -> list[tuple]:
    """The methods of `service` the REST binding routes: its own, and the operations' if it
    has long-running calls."""
    return [*served(package).get(service, ()), *(OPERATIONS if service in LONG_RUNNING and service in SERVED_IN.get(package, {}) else ())]


def service_names() -> list[str]:
    return [f"{package}.{s}" for package in API_VERSIONS for s in served(package)]


def register_service_descriptors() -> None:
    for package in API_VERSIONS:
        _register(package, f"ces_nb/emulator/{package.replace('.', '_')}_services.proto")


def _register(package: str, file_name: str) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file_name)
        return
    except KeyError:
        pass
    from google.protobuf import empty_pb2

    from google.longrunning import operations_pb2

    deps = {empty_pb2.DESCRIPTOR.name, operations_pb2.DESCRIPTOR.name}
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    for service, methods in served(package).items():
        svc = file.service.add(name=service)
        for method, req, resp, client_stream, server_stream in methods:
            for t in (req, resp):
                if t is not None:
                    deps.add(t.pb().DESCRIPTOR.file.name)
            svc.method.add(
                name=method,
                input_type="." + req.pb().DESCRIPTOR.full_name,
                output_type=_EMPTY if resp is None else "." + resp.pb().DESCRIPTOR.full_name,
                client_streaming=client_stream,
                server_streaming=server_stream,
            )
    file.dependency.extend(sorted(deps))
    pool.Add(file)
