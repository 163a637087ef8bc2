"""The REST/JSON binding (`ces-nb emulator --rest-port PORT`): the official clients' REST
transport, plain urllib and raw sockets against one real emulator process."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest
from google.api_core import exceptions, path_template
from google.auth.credentials import AnonymousCredentials
from google.cloud import ces_v1
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

from conftest import APP, EmulatorProcess, kind, texts

PARENT = "projects/test-project/locations/us"


@pytest.fixture(scope="module")
def rest_emulator(tmp_path_factory):
    process = EmulatorProcess("--db", str(tmp_path_factory.mktemp("rest") / "sessions.db"), rest_port=0)
    yield process
    process.stop()


def rest_client(cls, emulator):
    return cls(transport="rest", client_options={"api_endpoint": emulator.rest_url}, credentials=AnonymousCredentials())


@pytest.fixture(scope="module")
def rest_sessions(rest_emulator):
    return rest_client(ces_v1.SessionServiceClient, rest_emulator)


@pytest.fixture(scope="module")
def rest_agents(rest_emulator):
    return rest_client(ces_v1.AgentServiceClient, rest_emulator)


@pytest.fixture(scope="module")
def rest_tools(rest_emulator):
    return rest_client(ces_v1.ToolServiceClient, rest_emulator)


def new_session() -> str:
    return f"{APP}/sessions/rest-{uuid.uuid4().hex[:12]}"


def call(emulator, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(HTTP status, parsed JSON body) through plain urllib."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(emulator.rest_url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def session_path(name: str, verb: str = "runSession") -> str:
    return f"/v1/{name}:{verb}"


# -- the official client's REST transport ------------------------------------------------------

def test_run_session_over_rest(rest_sessions, rest_emulator):
    outputs = list(rest_sessions.run_session(request={
        "config": {"session": new_session()}, "inputs": [{"text": "Hello"}]}).outputs)
    assert "welcome" in texts(outputs).lower()
    assert outputs[-1].turn_completed and outputs[-1].diagnostic_info.root_span.name == "root"
    assert f"REST on {rest_emulator.rest_url}" in rest_emulator.output()


def test_stream_run_session_over_rest(rest_sessions):
    request = {"config": {"session": new_session(), "enable_text_streaming": True},
               "inputs": [{"text": "How many bags can I check?"}]}
    responses = list(rest_sessions.stream_run_session(request=request))
    outputs = [o for r in responses for o in r.outputs]
    chunks = [o.text for o in outputs if kind(o) == "text"]
    assert len(chunks) > 1 and "bag" in "".join(chunks)
    assert any(kind(o) == "citations" and o.citations.cited_chunks for o in outputs)
    assert outputs[-1].turn_completed and not any(o.turn_completed for o in outputs[:-1])


def test_agent_and_tool_services_over_rest(rest_agents, rest_tools, rest_sessions, rest_emulator):
    assert [a.name for a in rest_agents.list_apps(parent=PARENT)] == [APP]
    assert rest_agents.get_app(name=APP).display_name == "SkyWay Air"
    assert {a.display_name for a in rest_agents.list_agents(parent=APP)} == {"SkyWay Concierge", "Booking Agent"}
    assert rest_agents.get_agent(name=f"{APP}/agents/booking-agent").display_name == "Booking Agent"
    assert "select_seat" in {t.display_name for t in rest_agents.list_tools(parent=APP)}
    seat = rest_agents.get_tool(name=f"{APP}/tools/select_seat")
    assert seat.client_function.parameters.properties["cabin"].enum == ["economy", "premium", "business"]

    name = new_session()
    rest_sessions.run_session(request={"config": {"session": name}, "inputs": [{"text": "Hello"}]})
    conversation = name.replace("/sessions/", "/conversations/")
    assert conversation in [c.name for c in rest_agents.list_conversations(parent=APP)]
    assert conversation in [c.name for c in rest_agents.list_conversations(
        request={"parent": APP, "sources": [ces_v1.Conversation.Source.LIVE], "page_size": 500})]
    got = rest_agents.get_conversation(name=conversation)
    assert got.turn_count == 1 and got.turns[0].messages[0].chunks[0].text == "Hello"
    assert got.source == ces_v1.Conversation.Source.LIVE
    rest_agents.delete_conversation(name=conversation)
    with pytest.raises(exceptions.NotFound, match="ListConversations"):
        rest_agents.get_conversation(name=conversation)

    request = {"parent": APP, "tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "SW12"}}
    over_rest = rest_tools.execute_tool(request=request)
    assert over_rest.tool == f"{APP}/tools/get_flight_status" and "SW12" in json.dumps(dict(over_rest.response))
    with grpc.insecure_channel(rest_emulator.address) as channel:  # the very same handler as gRPC
        over_grpc = ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel)).execute_tool(request=request)
    assert ces_v1.ExecuteToolResponse.to_dict(over_rest) == ces_v1.ExecuteToolResponse.to_dict(over_grpc)


def test_errors_reach_the_official_client(rest_sessions, rest_tools, rest_agents):
    with pytest.raises(exceptions.NotFound, match="app 'nope' is not loaded in the emulator"):
        rest_sessions.run_session(request={"config": {"session": "projects/p/locations/us/apps/nope/sessions/s1"},
                                           "inputs": [{"text": "Hello"}]})
    with pytest.raises(exceptions.NotFound, match="is not loaded"):  # a stream's error before its first response
        list(rest_sessions.stream_run_session(request={"config": {"session": "projects/p/locations/us/apps/nope/sessions/s1"},
                                                       "inputs": [{"text": "Hello"}]}))
    with pytest.raises(exceptions.BadRequest, match="client function"):  # FAILED_PRECONDITION is 400
        rest_tools.execute_tool(request={"parent": APP, "tool": f"{APP}/tools/select_seat", "args": {}})
    with pytest.raises(exceptions.BadRequest, match="page_token"):
        rest_agents.list_conversations(request={"parent": APP, "page_token": "garbage!"})
    with pytest.raises(exceptions.MethodNotImplemented, match="CreateApp is not served by the emulator"):
        rest_agents.create_app(request={"parent": PARENT, "app": {"display_name": "x"}})


# -- plain HTTP ------------------------------------------------------------------------------------

def test_bad_json_bodies_are_400_saying_what_is_wrong(rest_emulator):
    path = session_path(new_session())
    status, body = call(rest_emulator, "POST", path, b'{"inputs": [{"text": "Hello"}')
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == 400
    assert "not JSON" in body["error"]["message"] and "line 1 column" in body["error"]["message"]
    status, body = call(rest_emulator, "POST", path, {"inputs": [{"txet": "Hello"}]})
    assert status == 400 and 'no field named "txet"' in body["error"]["message"]
    status, body = call(rest_emulator, "POST", path, b"[1, 2]")
    assert status == 400 and "must be a JSON object" in body["error"]["message"]
    status, body = call(rest_emulator, "POST", path, b"\xff\xfe{")
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = call(rest_emulator, "POST", path, {"inputs": [{"text": "x" * 70_000}]})  # the emulator's own limit
    assert status == 400 and "65" in body["error"]["message"]
    status, body = call(rest_emulator, "GET", f"/v1/{APP}/conversations?pageSize=ten")
    assert status == 400 and "ten" in body["error"]["message"]
    status, body = call(rest_emulator, "GET", f"/v1/{APP}/conversations?colour=red")
    assert status == 400 and "unknown query parameter 'colour'" in body["error"]["message"]


def test_unknown_paths_are_404_listing_the_routes(rest_emulator):
    status, body = call(rest_emulator, "GET", "/v1/projects/p/locations/us/apps/skyway/sessions/s1:chat")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    message = body["error"]["message"]
    assert "'/v1/projects/p/locations/us/apps/skyway/sessions/s1:chat'" in message
    assert "POST /v1/{config.session=projects/*/locations/*/apps/*/sessions/*}:runSession" in message
    status, body = call(rest_emulator, "GET", session_path(new_session()))  # right path, wrong method
    assert status == 404 and "takes POST" in body["error"]["message"]


def test_enums_as_numbers_with_alt_json_enum_encoding_int(rest_emulator):
    name = new_session()
    status, _ = call(rest_emulator, "POST", session_path(name), {"inputs": [{"text": "Hello"}]})
    assert status == 200
    conversation = "/v1/" + name.replace("/sessions/", "/conversations/")
    status, by_name = call(rest_emulator, "GET", conversation)
    assert status == 200 and by_name["source"] == "LIVE" and by_name["channelType"] == "TEXT"
    status, by_number = call(rest_emulator, "GET", conversation + "?$alt=json;enum-encoding=int")
    assert status == 200 and by_number["source"] == ces_v1.Conversation.Source.LIVE.value
    assert by_number["inputTypes"] == [ces_v1.Conversation.InputType.INPUT_TYPE_TEXT.value]
    listing = f"/v1/{APP}/conversations?pageSize=500&%24alt=json%3Benum-encoding%3Dint"
    for sources in (f"sources={ces_v1.Conversation.Source.LIVE.value}", "sources=LIVE"):  # enums in, as numbers or names
        status, body = call(rest_emulator, "GET", f"{listing}&{sources}")
        assert status == 200 and name.replace("/sessions/", "/conversations/") in [c["name"] for c in body["conversations"]]
    status, body = call(rest_emulator, "GET", f"{listing}&sources=EVAL")
    assert status == 200 and body.get("conversations", []) == []
    status, body = call(rest_emulator, "GET", conversation + "?$alt=proto")
    assert status == 400 and "JSON only" in body["error"]["message"]


def test_session_name_from_the_url_path(rest_emulator):
    name = new_session()
    status, body = call(rest_emulator, "POST", session_path(name), {"config": {}, "inputs": [{"text": "Hello"}]})
    assert status == 200 and "welcome" in body["outputs"][0]["text"].lower()
    status, body = call(rest_emulator, "POST", session_path(name), {"config": {"session": name}, "inputs": [{"text": "Hello"}]})
    assert status == 200 and body["outputs"][-1]["turnIndex"] == 2  # same name in both: the same session
    other = new_session()
    status, body = call(rest_emulator, "POST", session_path(name), {"config": {"session": other}, "inputs": [{"text": "Hello"}]})
    assert status == 400 and "config.session" in body["error"]["message"] and "URL path" in body["error"]["message"]
    status, body = call(rest_emulator, "GET", f"/v1/{APP}/tools/get_flight_status?name={APP}/tools/select_seat")
    assert status == 400 and "URL path" in body["error"]["message"]


def raw_http(emulator, request: bytes, timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", emulator.rest_port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_curl_style_raw_post(rest_emulator):
    # What `curl -d '{...}' 'http://HOST:PORT/v1/...:runSession?$alt=json;enum-encoding=int'` sends: a form
    # content type, the query unencoded, no config in the body.
    body = b'{"inputs":[{"text":"Hello"}]}'
    name = new_session()
    request = (f"POST /v1/{name}:runSession?$alt=json;enum-encoding=int HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    head, _, payload = raw_http(rest_emulator, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"application/json" in head.lower()
    outputs = json.loads(payload)["outputs"]
    assert "welcome" in outputs[0]["text"].lower() and outputs[-1]["turnCompleted"] is True


def test_stream_is_a_json_array_sent_as_produced(rest_emulator):
    connection = http.client.HTTPConnection("127.0.0.1", rest_emulator.rest_port, timeout=20)
    body = json.dumps({"config": {"enableTextStreaming": True}, "inputs": [{"text": "How many bags can I check?"}]})
    connection.request("POST", session_path(new_session(), "streamRunSession"), body=body)
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    pieces = []
    while piece := response.read1(1 << 20):  # one HTTP chunk at a time
        pieces.append(piece)
    connection.close()
    assert len(pieces) >= 4 and pieces[0].startswith(b'[{"outputs"') and pieces[-1].endswith(b"]")
    elements = json.loads(b"".join(pieces))
    assert len(elements) == len(pieces) - 1  # each response went out on its own, then the closing ]
    assert elements[-1]["outputs"][-1]["turnCompleted"] is True


def test_a_slow_client_blocks_no_one(rest_emulator, rest_sessions):
    # One client sends half a body and stalls, another leaves a stream halfway: the rest go on.
    stalled = socket.create_connection(("127.0.0.1", rest_emulator.rest_port), timeout=20)
    stalled.sendall(f"POST {session_path(new_session())} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{\"inp".encode())
    leaver = http.client.HTTPConnection("127.0.0.1", rest_emulator.rest_port, timeout=20)
    leaver.request("POST", session_path(new_session(), "streamRunSession"),
                   body=json.dumps({"config": {"enableTextStreaming": True}, "inputs": [{"text": "How many bags can I check?"}]}))
    assert leaver.getresponse().read1(10).startswith(b"[")
    leaver.close()
    try:
        t0 = time.monotonic()
        outputs = rest_sessions.run_session(request={"config": {"session": new_session()}, "inputs": [{"text": "Hello"}]}).outputs
        assert "welcome" in texts(outputs).lower() and time.monotonic() - t0 < 10
    finally:
        stalled.close()
    status, _ = call(rest_emulator, "GET", f"/v1/{APP}")
    assert status == 200


def test_a_taken_rest_port_is_an_error_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--rest-port", str(port), "--db", ":memory:"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"REST port {port} on 127.0.0.1 is taken" in done.stderr and "--rest-port 0" in done.stderr


# -- routing, in process -------------------------------------------------------------------------

def test_routes_follow_the_client_transports():
    """Every route is the official transport's own template: a request the client transcodes
    comes back to the same RPC with the same path fields."""
    from ces_nb.emulator.rest import RestApp, _http_options, _rest_base

    class Handlers:
        def __getattr__(self, name):
            return lambda *a: None

    app = RestApp({s: Handlers() for s in ("SessionService", "AgentService", "ToolService")})
    served = {r.rpc for r in app.routes if r.handler is not None}
    assert served == {
        "SessionService.RunSession", "SessionService.StreamRunSession",
        *(f"AgentService.{m}" for m in ("ListApps", "GetApp", "ListAgents", "GetAgent", "ListTools", "GetTool",
                                         "ListToolsets", "GetToolset", "ListGuardrails", "GetGuardrail",
                                         "ListExamples", "GetExample",
                                         "ListConversations", "GetConversation", "DeleteConversation")),
        "ToolService.ExecuteTool",
    }
    assert not any("Bidi" in r.rpc for r in app.routes)
    for route in app.routes:
        if route.handler is None:
            continue
        service, method = route.rpc.split(".")
        options = _http_options(_rest_base(service))[method]
        request = route.request_type.pb()()
        for n, field in enumerate(route.fields):
            *parents, leaf = field.split(".")
            target = request
            for part in parents:
                target = getattr(target, part)
            value = _segment_template(route.uri, field).replace("*", f"x{n}~é")  # é goes percent-encoded
            setattr(target, leaf, value)
        transcoded = path_template.transcode(options, request)
        found, values = app.find(transcoded["method"].upper(), transcoded["uri"])
        assert found.rpc == route.rpc, route
        assert tuple(path_template.get_field(request, f) for f in route.fields) == \
            tuple(urllib.parse.unquote(v) for v in values), route


def _segment_template(uri: str, field: str) -> str:
    """The sub-template of `field` in `uri`: `{config.session=projects/*/...}` -> `projects/*/...`."""
    start = uri.index("{" + field + "=") + len(field) + 2
    return uri[start: uri.index("}", start)]

