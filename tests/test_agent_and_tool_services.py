"""AgentService read side, conversations, ToolService.ExecuteTool, health and reflection."""

from __future__ import annotations

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import APP, EmulatorProcess, run

PARENT = "projects/test-project/locations/us"


def test_apps_agents_and_tools(agents):
    apps = list(agents.list_apps(parent=PARENT))
    assert [a.name for a in apps] == [APP]
    app = agents.get_app(name=APP)
    assert app.display_name == "SkyWay Air" and app.root_agent == f"{APP}/agents/skyway-concierge"
    listed = {a.display_name: a for a in agents.list_agents(parent=APP)}
    assert set(listed) == {"SkyWay Concierge", "Booking Agent"}
    root = agents.get_agent(name=f"{APP}/agents/skyway-concierge")
    assert f"{APP}/agents/booking-agent" in root.child_agents
    assert f"{APP}/tools/get_flight_status" in root.tools
    assert "concierge" in root.instruction
    tools = {t.display_name: t for t in agents.list_tools(parent=APP)}
    assert set(tools) == {"confirm_payment", "get_flight_status", "search_policies", "select_seat", "travel_search"}
    seat = agents.get_tool(name=f"{APP}/tools/select_seat")
    assert seat.client_function.parameters.properties["cabin"].enum == ["economy", "premium", "business"]
    with pytest.raises(exceptions.NotFound, match="tools: confirm_payment"):
        agents.get_tool(name=f"{APP}/tools/nope")
    with pytest.raises(exceptions.NotFound, match="loaded apps"):
        agents.get_app(name="projects/p/locations/us/apps/ghost")


def test_conversations_list_get_delete(agents, sessions, session_name):
    name = session_name()
    run(sessions, name, "Hello")
    run(sessions, name, "How many bags can I check?")
    conv_name = name.replace("/sessions/", "/conversations/")
    conversation = agents.get_conversation(name=conv_name)
    assert conversation.turn_count == 2 and len(conversation.turns) == 2
    assert conversation.turns[1].messages[0].chunks[0].text == "How many bags can I check?"
    assert conversation.turns[1].root_span.name == "root"
    assert any(s.name == "Tool" for s in conversation.turns[1].root_span.child_spans)
    assert conversation.source == ces_v1.Conversation.Source.LIVE
    assert ces_v1.Conversation.InputType.INPUT_TYPE_TEXT in conversation.input_types
    listed = [c.name for c in agents.list_conversations(parent=APP)]
    assert conv_name in listed
    future = [c.name for c in agents.list_conversations(request={"parent": APP, "filter": 'start_time > "2999-01-01T00:00:00Z"'})]
    assert future == []
    evaluated = list(agents.list_conversations(request={"parent": APP, "source": ces_v1.Conversation.Source.EVAL}))
    assert evaluated == []
    with pytest.raises(exceptions.InvalidArgument, match="start_time"):
        list(agents.list_conversations(request={"parent": APP, "filter": "turn_count > 3"}))
    agents.delete_conversation(name=conv_name)
    with pytest.raises(exceptions.NotFound):
        agents.get_conversation(name=conv_name)


def test_conversations_are_paged(agents, sessions, session_name):
    made = set()
    for _ in range(5):
        name = session_name()
        run(sessions, name, "Hello")
        made.add(name.replace("/sessions/", "/conversations/"))
    first = agents.list_conversations(request={"parent": APP, "page_size": 2})
    assert len(first.conversations) == 2 and first.next_page_token
    everything = [c.name for c in agents.list_conversations(request={"parent": APP, "page_size": 2})]
    assert made <= set(everything) and len(everything) == len(set(everything))
    with pytest.raises(exceptions.InvalidArgument, match="page_token"):
        agents.list_conversations(request={"parent": APP, "page_token": "garbage!"})


def test_conversations_survive_a_restart(tmp_path):
    db = str(tmp_path / "store.db")
    name = f"{APP}/sessions/restart-me"
    first = EmulatorProcess("--db", db, "--workers", "1")  # a restart, not the workers (test_workers.py)
    try:
        channel = grpc.insecure_channel(first.address)
        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        run(client, name, "Hello")
        channel.close()
    finally:
        first.stop()
    second = EmulatorProcess("--db", db, "--workers", "1")
    try:
        channel = grpc.insecure_channel(second.address)
        agents = ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))
        listed = [c.name for c in agents.list_conversations(parent=APP)]
        assert listed == [f"{APP}/conversations/restart-me"]
        turns = agents.get_conversation(name=listed[0]).turns
        assert "welcome" in turns[0].messages[1].chunks[0].text
        # ...and the session continues where it stopped.
        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        assert run(client, name, "What is my loyalty tier?")[0].turn_index == 2
        channel.close()
    finally:
        second.stop()


def test_execute_python_tool(tools):
    response = tools.execute_tool(request={"tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "sw5"}})
    assert response.tool == f"{APP}/tools/get_flight_status"
    assert response.response["flight_number"] == "SW5"
    bare = tools.execute_tool(request={"parent": APP, "tool": "get_flight_status", "args": {"flight_number": "SW5"}})
    assert bare.response["gate"] == response.response["gate"]


def test_execute_search_tool_returns_citations(tools):
    response = tools.execute_tool(request={"tool": f"{APP}/tools/search_policies", "args": {"query": "pets cat"}})
    assert response.citations.cited_chunks[0].uri == "https://help.skyway.example/pets"


def test_execute_with_mocks(tools):
    mock = {"mocked_tool_calls": [{"tool": "select_seat", "expected_args_pattern": {"cabin": "econ.*"}, "mock_response": {"seat": "1A"}}],
            "unmatched_tool_call_behavior": "FAIL"}
    hit = tools.execute_tool(request={"tool": f"{APP}/tools/select_seat", "args": {"cabin": "economy"}, "mock_config": mock})
    assert hit.response["seat"] == "1A"
    with pytest.raises(exceptions.FailedPrecondition, match="no mocked call"):
        tools.execute_tool(request={"tool": f"{APP}/tools/select_seat", "args": {"cabin": "business"}, "mock_config": mock})
    mock_py = {"mocked_tool_calls": [{"tool": "get_flight_status", "expected_args_pattern": {"flight_number": "SW1"}, "mock_response": {"status": "mocked"}}],
               "unmatched_tool_call_behavior": "PASS_THROUGH"}
    passed = tools.execute_tool(request={"tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "SW2"}, "mock_config": mock_py})
    assert passed.response["flight_number"] == "SW2"
    mocked = tools.execute_tool(request={"tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "SW1"}, "mock_config": mock_py})
    assert mocked.response["status"] == "mocked"


def test_execute_client_function_explains_itself(tools):
    with pytest.raises(exceptions.FailedPrecondition, match="client function"):
        tools.execute_tool(request={"tool": f"{APP}/tools/select_seat", "args": {}})
    with pytest.raises(exceptions.InvalidArgument, match="set tool"):
        tools.execute_tool(request={"args": {}})


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "google.cloud.ces.v1.SessionService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.cloud.ces.v1.SessionService")]
    listed, found = list(stub.ServerReflectionInfo(iter(requests)))
    services = {s.name for s in listed.list_services_response.service}
    assert {"google.cloud.ces.v1.SessionService", "google.cloud.ces.v1.AgentService", "google.cloud.ces.v1.ToolService"} <= services
    from google.protobuf import descriptor_pb2

    file = descriptor_pb2.FileDescriptorProto.FromString(found.file_descriptor_response.file_descriptor_proto[0])
    methods = {m.name for s in file.service for m in s.method}
    assert {"RunSession", "StreamRunSession", "BidiRunSession"} <= methods


def test_turn_records_of_every_stored_format_read_back():
    """Sessions written by earlier emulator versions stay readable after an upgrade."""
    import base64

    from ces_nb.emulator.services.agent import _stored_turn

    turn = ces_v1.Conversation.Turn(messages=[ces_v1.Message(role="user", chunks=[ces_v1.Chunk(text="hi")])],
                                    root_span=ces_v1.Span(name="root"))
    pb = ces_v1.Conversation.Turn.pb(turn)
    as_bytes = base64.b64encode(pb.SerializeToString()).decode()
    as_json = json_format.MessageToJson(pb)
    as_dict = {"messages": [json_format.MessageToDict(ces_v1.Message.pb(turn.messages[0]))],
               "root_span": json_format.MessageToDict(ces_v1.Span.pb(turn.root_span))}
    assert _stored_turn(as_bytes) == _stored_turn(as_json) == _stored_turn(as_dict) == turn
