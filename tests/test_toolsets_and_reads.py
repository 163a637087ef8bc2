"""Real CES exports in the emulator: toolsets (OpenAPI, MCP), environment.json, widget tools,
transfer rules, the load report (`ces-nb emulator --check`), and the AgentService reads of
toolsets, guardrails and examples, through the official clients against a real emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport
from google.protobuf import json_format

from ces_nb.emulator.export import load_export

from conftest import EmulatorProcess, kind, run, texts

CONSOLE = Path(__file__).parent / "apps" / "console_export"
APP = "projects/p/locations/us/apps/order-desk"
ROOT_AGENT = "6f1c2d9e-3b7a-4c51-9e0f-2a8d4b6c1e01"


@pytest.fixture(scope="module")
def console():
    process = EmulatorProcess("--app", str(CONSOLE), "--db", ":memory:")
    channel = grpc.insecure_channel(process.address)
    clients = (
        ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
        ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel)),
        ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel)),
        process,
    )
    yield clients
    channel.close()
    process.stop()


_n = iter(range(10_000))


def _session() -> str:
    return f"{APP}/sessions/toolsets-{next(_n)}"


def _calls(outputs) -> list[tuple[str, dict, dict]]:
    """(tool display name, args, response) of each tool call the turn's messages hold."""
    calls, answers = [], {}
    for o in outputs:
        for message in o.diagnostic_info.messages:
            for chunk in message.chunks:
                pb = ces_v1.Chunk.pb(chunk)
                if pb.HasField("tool_call"):
                    calls.append((chunk.tool_call.display_name, json_format.MessageToDict(pb.tool_call.args), chunk.tool_call.id))
                if pb.HasField("tool_response"):
                    answers[chunk.tool_response.id] = json_format.MessageToDict(pb.tool_response.response)
    return [(name, args, answers.get(call_id, {})) for name, args, call_id in calls]


# -- loading --------------------------------------------------------------------------------

def test_openapi_toolset_becomes_one_tool_per_operation():
    app = load_export(str(CONSOLE))
    ops = app.toolset_operations
    assert {"orders_api_getOrderStatus", "orders_api_cancelOrder", "orders_api_listOrders", "catalog_mcp_search_catalog"} == set(ops)
    status = ops["orders_api_getOrderStatus"]
    assert status.method == "GET" and status.path == "/orders/{orderId}"
    # path parameter from the path item, query parameter from the operation; the
    # x-ces-session-context header is CES's to fill, not the model's
    assert set(status.parameters["properties"]) == {"orderId", "verbose"}
    assert status.parameters["required"] == ["orderId"]
    assert status.session_context == {"x-customer-id": "$context.variables.customer_id"}
    cancel = ops["orders_api_cancelOrder"].parameters
    assert cancel["properties"]["reason"]["enum"] == ["changed_mind", "too_late", "other"]  # $ref resolved
    assert set(cancel["required"]) == {"orderId", "reason"}
    # environment.json's url replaced the schema's $env_var; the MCP server address too
    schema = app.toolsets["orders_api"].open_api_toolset.open_api_schema
    assert "https://orders.example.com/v1" in schema and "$env_var" not in schema
    assert app.toolsets["catalog_mcp"].mcp_toolset.server_address == "https://catalog.example.com/mcp/"
    # the agent gets the tools its toolsets[].toolIds name, and all of a toolset that names none
    from ces_nb.emulator.export import toolset_tool_names

    names = toolset_tool_names(app, app.root_agent)
    assert names == ["orders_api_getOrderStatus", "orders_api_cancelOrder", "catalog_mcp_search_catalog"]


def test_the_load_report_names_every_file_and_every_unknown_key():
    report = load_export(str(CONSOLE)).report
    text = report.text()
    lines = {e.line() for e in report.entries}
    assert "app.json: ignored: unknown key 'consoleLayoutHints' (not a field of CES App)" in lines
    assert any("consoleColor" in line and "agents/" + ROOT_AGENT in line for line in lines)
    assert any("unknown key 'mcpToolset.serverLabel'" in line and line.startswith("toolsets/f3a9b8c7") for line in lines)  # YAML
    assert any(line.startswith("EXPORT_NOTES.txt: ignored") for line in lines)
    assert any(line.startswith("pythonEnvFiles/pythonEnvFiles.json: ignored") for line in lines)
    assert any("environment.json: ignored: toolsets.retired_api" in line for line in lines)
    assert any("environment.json: ignored: deploymentNotes" in line for line in lines)
    assert any("DELETE /orders has no operationId" in line for line in lines)
    assert any("transferRules[1]" in line and "python code conditions" in line for line in lines)
    assert any("transferRules[0]" in line and "runs approximately" in line for line in lines)
    assert "widgetTool 'order_picker'" in text and "mcpToolset 'catalog_mcp'" in text
    counts = report.counts()
    assert counts["runs"] and counts["runs approximately"] and counts["ignored"]


def test_check_prints_the_report_and_exits_0_or_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--check", "--app", str(CONSOLE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "toolsets/e7f1a2b3-4c5d-4e6f-9a0b-1c2d3e4f5a04/e7f1a2b3-4c5d-4e6f-9a0b-1c2d3e4f5a04.json" in done.stdout
    assert "runs approximately:" in done.stdout and "ignored:" in done.stdout
    assert "listening" not in done.stdout  # nothing is served
    broken = tmp_path / "broken"
    shutil.copytree(CONSOLE, broken)
    data = json.loads((broken / "app.json").read_text())
    data["rootAgent"] = "Nobody"
    (broken / "app.json").write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--check", "--app", str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot load: app.json: rootAgent 'Nobody' names no agent" in done.stdout


# -- conversations --------------------------------------------------------------------------

def test_openapi_toolset_answers_from_its_fake_code(console):
    sessions, *_ = console
    outputs = run(sessions, _session(), "Where is my order 1234?")
    assert "Order 1234 has shipped with DHL." in texts(outputs)
    (name, args, response), = _calls(outputs)
    assert name == "orders_api_getOrderStatus" and args == {"orderId": "1234"}
    assert response == {"orderId": "1234", "status": "shipped", "carrier": "DHL"}


def test_widget_tool_answers_with_its_payload(console):
    sessions, *_ = console
    outputs = run(sessions, _session(), "Show me some headphones")
    (name, args, response), = _calls(outputs)
    assert name == "order_picker" and args == {"query": "headphones"}
    assert response["widgetType"] == "PRODUCT_CAROUSEL" and response["uiConfig"] == {"columns": 3, "theme": "light"}
    assert response["data"] == {"query": "headphones"}
    assert "Here are some picks." in texts(outputs)


def test_mcp_tool_without_a_fake_says_why_it_cannot_run(console):
    sessions, *_ = console
    outputs = run(sessions, _session(), "Search the catalog for desk lamps")
    (name, _args, response), = _calls(outputs)
    assert name == "catalog_mcp_search_catalog"
    assert "makes no network calls" in response["error"] and "https://catalog.example.com/mcp/" in response["error"]
    assert "fake code" in texts(outputs)


def test_deterministic_transfer_rule_on_a_session_variable(console):
    sessions, *_ = console
    gold = run(sessions, _session(), "Hello", ces_v1.SessionInput(variables={"customer_tier": "gold"}))
    transfers = [c.agent_transfer for o in gold for m in o.diagnostic_info.messages for c in m.chunks
                 if ces_v1.Chunk.pb(c).HasField("agent_transfer")]
    assert [t.display_name or t.target_agent for t in transfers][:1] in (["VIP Desk"], [f"{APP}/agents/vip-desk"])
    standard = run(sessions, _session(), "Hello")
    assert not any(ces_v1.Chunk.pb(c).HasField("agent_transfer")
                   for o in standard for m in o.diagnostic_info.messages for c in m.chunks)


def test_entry_agent_takes_the_resource_name_list_agents_returns(console):
    sessions, agents, *_ = console
    vip = next(a for a in agents.list_agents(parent=APP) if a.display_name == "VIP Desk")
    for entry in (vip.name, "VIP Desk"):
        name = _session()
        run(sessions, name, "Hello", entry_agent=entry)
        conversation = agents.get_conversation(name=name.replace("/sessions/", "/conversations/"))
        assert conversation.entry_agent == vip.name
    with pytest.raises(exceptions.InvalidArgument, match="VIP Desk"):
        run(sessions, _session(), "Hello", entry_agent=f"{APP}/agents/nobody")


# -- reads ----------------------------------------------------------------------------------

def test_toolsets_guardrails_and_examples_are_listed_paged_and_got(console):
    _, agents, *_ = console
    toolsets = list(agents.list_toolsets(parent=APP))
    assert [t.name for t in toolsets] == [f"{APP}/toolsets/catalog_mcp", f"{APP}/toolsets/orders_api"]
    first = agents.list_toolsets(request={"parent": APP, "page_size": 1})
    assert len(first.toolsets) == 1 and first.next_page_token
    orders = agents.get_toolset(name=f"{APP}/toolsets/orders_api")
    assert "operationId: getOrderStatus" in orders.open_api_toolset.open_api_schema
    with pytest.raises(exceptions.NotFound, match="toolsets: catalog_mcp, orders_api"):
        agents.get_toolset(name=f"{APP}/toolsets/nope")
    guardrails = list(agents.list_guardrails(parent=APP))
    assert [g.display_name for g in guardrails] == ["No Profanity"]
    assert agents.get_guardrail(name=guardrails[0].name).content_filter.banned_contents == ["darn"]
    with pytest.raises(exceptions.NotFound, match="guardrails: No Profanity"):
        agents.get_guardrail(name=f"{APP}/guardrails/nope")
    examples = list(agents.list_examples(request={"parent": APP, "page_size": 2}))
    assert {e.display_name for e in examples} == {"order_status", "pick_product", "catalog_search"}
    assert agents.get_example(name=f"{APP}/examples/order_status").messages[0].chunks[0].text == "Where is my order 1234?"
    with pytest.raises(exceptions.NotFound, match="examples: catalog_search, order_status, pick_product"):
        agents.get_example(name=f"{APP}/examples/nope")
    with pytest.raises(exceptions.InvalidArgument, match="page_token"):
        agents.list_examples(request={"parent": APP, "page_token": "garbage!"})
    root = agents.get_agent(name=f"{APP}/agents/order-desk-agent")
    assert [t.toolset for t in root.toolsets] == [f"{APP}/toolsets/orders_api", f"{APP}/toolsets/catalog_mcp"]
    app = agents.get_app(name=APP)
    assert any("consoleLayoutHints" in e for e in app.validation_errors)
    assert any("catalog_mcp" in e and "ignored" in e for e in app.validation_errors)


def test_end_session_answers_get_tool_and_execute_tool(console):
    _, agents, tools, _ = console
    tool = agents.get_tool(name=f"{APP}/tools/end_session")
    assert tool.system_tool.name == "end_session" and tool.display_name == "end_session"
    response = tools.execute_tool(request={"tool": f"{APP}/tools/end_session", "args": {"reason": "done"}})
    assert response.tool == f"{APP}/tools/end_session" and response.response["ended"] is True


def test_execute_toolset_tool_fake_mock_and_why_not(console):
    _, _, tools, _ = console
    toolset = f"{APP}/toolsets/orders_api"
    faked = tools.execute_tool(request={"toolset_tool": {"toolset": toolset, "tool_id": "cancelOrder"},
                                        "args": {"orderId": "9", "reason": "too_late"}})
    assert dict(faked.response) == {"orderId": "9", "cancelled": True, "reason": "too_late"}
    assert faked.toolset_tool.toolset == toolset and faked.toolset_tool.tool_id == "cancelOrder"
    # the fake returns None for listOrders ("use the real tool"): offline that is an error saying why
    with pytest.raises(exceptions.FailedPrecondition, match="makes no network calls.*GET /orders"):
        tools.execute_tool(request={"toolset_tool": {"toolset": toolset, "tool_id": "listOrders"}})
    mocked = tools.execute_tool(request={
        "tool": f"{APP}/toolsets/catalog_mcp/tools/search_catalog", "args": {"query": "lamp"},
        "mock_config": {"mocked_tool_calls": [{"tool_id": "search_catalog", "mock_response": {"results": ["L1"]}}]},
    })
    assert list(mocked.response["results"]) == ["L1"]
    with pytest.raises(exceptions.FailedPrecondition, match="add fake code to the toolset"):
        tools.execute_tool(request={"toolset_tool": {"toolset": f"{APP}/toolsets/catalog_mcp", "tool_id": "search_catalog"}})
    with pytest.raises(exceptions.NotFound, match="its tools: cancelOrder, getOrderStatus, listOrders"):
        tools.execute_tool(request={"toolset_tool": {"toolset": toolset, "tool_id": "nope"}})
    with pytest.raises(exceptions.NotFound, match="toolsets: catalog_mcp, orders_api"):
        tools.execute_tool(request={"toolset_tool": {"toolset": f"{APP}/toolsets/nope", "tool_id": "x"}})


def test_reflection_lists_the_new_reads(console):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    *_, process = console
    with grpc.insecure_channel(process.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.cloud.ces.v1.AgentService")
        reply = next(stub.ServerReflectionInfo(iter([request])))
    from google.protobuf import descriptor_pb2

    methods = set()
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in proto.service:
            if service.name == "AgentService":
                methods |= {m.name for m in service.method}
    assert {"ListToolsets", "GetToolset", "ListGuardrails", "GetGuardrail", "ListExamples", "GetExample"} <= methods


def test_the_report_is_in_the_startup_log(console):
    *_, process = console
    out = process.output()
    assert "app order-desk load report" in out and "consoleLayoutHints" in out
