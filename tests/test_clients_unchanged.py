"""Existing CES clients work against the emulator unchanged: both API versions (v1, v1beta),
gRPC and REST, plain and TLS, with bearer tokens; the official client over a real socket."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import ces_v1, ces_v1beta
from google.oauth2.credentials import Credentials
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import APP
from emulator_process import EmulatorProcess, free_port

VERSIONS = {"v1": ces_v1, "v1beta": ces_v1beta}
TURNS = ["What is the status of flight SW12?", "I'd like to pick a seat"]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tls") / "tls"


@pytest.fixture(scope="module")
def emulator(tls_dir):
    process = EmulatorProcess("--db", ":memory:", "--tls-port", str(free_port()), "--tls-dir", str(tls_dir), rest_port=0)
    process.tls_port = int(_arg(process.args, "--tls-port"))
    yield process
    process.stop()


def _arg(args, name):
    return args[args.index(name) + 1]


def _secure_channel(emulator, tls_dir, token="any-token"):
    roots = (tls_dir / "ca.pem").read_bytes()
    credentials = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(roots),
                                                     grpc.access_token_call_credentials(token))
    return grpc.secure_channel(f"localhost:{emulator.tls_port}", credentials)


def _client(kind: str, version: str, transport: str, emulator, tls_dir, monkeypatch, channels: list):
    """The official `kind` client of `version` over `transport`."""
    module = VERSIONS[version]
    cls = getattr(module, kind)
    if transport in ("rest", "rest+tls"):
        if transport == "rest+tls":
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_dir / "roots.pem"))  # what `ces-nb env` exports
            endpoint = f"https://localhost:{emulator.tls_port}"
            creds = Credentials(token="any-token")
        else:
            endpoint, creds = emulator.rest_url, AnonymousCredentials()
        return cls(transport="rest", client_options={"api_endpoint": endpoint}, credentials=creds)
    channel = grpc.insecure_channel(emulator.address) if transport == "grpc" else _secure_channel(emulator, tls_dir)
    channels.append(channel)
    transport_cls = cls.get_transport_class("grpc")
    return cls(transport=transport_cls(channel=channel))


def _conversation(sessions, agents, tools, session_id: str):
    """Two turns, then the stored conversation and a direct tool call, as comparable values."""
    name = f"{APP}/sessions/{session_id}"
    said = []
    for text in TURNS:
        outputs = sessions.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]}).outputs
        calls = [c.tool_call.display_name for m in outputs[-1].diagnostic_info.messages for c in m.chunks if c.tool_call.display_name]
        tool_spans = [s for s in outputs[-1].diagnostic_info.root_span.child_spans if s.name == "Tool"]
        said.append((" ".join(o.text for o in outputs if o.text), calls,
                     [(s.attributes["name"], dict(s.attributes.get("args") or {})) for s in tool_spans]))
    conversation = agents.get_conversation(name=f"{APP}/conversations/{session_id}")
    listed = [c.name for c in agents.list_conversations(parent=APP)]
    tool = tools.execute_tool(request={"parent": APP, "tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "SW12"}})
    toolsets = [t.name for t in agents.list_toolsets(parent=APP)]
    return said, len(conversation.turns), conversation.name in listed, dict(tool.response), toolsets


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("transport", ["grpc", "grpc+tls", "rest", "rest+tls"])
def test_the_same_conversation_over_every_transport_and_version(emulator, tls_dir, monkeypatch, version, transport):
    channels: list = []
    try:
        reference = _conversation(*(_client(k, "v1", "grpc", emulator, tls_dir, monkeypatch, channels)
                                    for k in ("SessionServiceClient", "AgentServiceClient", "ToolServiceClient")),
                                  f"ref-{uuid.uuid4().hex[:8]}")
        got = _conversation(*(_client(k, version, transport, emulator, tls_dir, monkeypatch, channels)
                              for k in ("SessionServiceClient", "AgentServiceClient", "ToolServiceClient")),
                            f"{transport.replace('+', '-')}-{version}-{uuid.uuid4().hex[:8]}")
    finally:
        for channel in channels:
            channel.close()
    assert got == reference
    said, turns, listed, tool, _ = got
    assert "SW12" in said[0][0] and said[0][2] and said[0][2][0][1]["flight_number"].upper() == "SW12", said
    assert turns == len(TURNS) and listed and tool


def test_health_and_reflection_list_both_versions(emulator):
    with grpc.insecure_channel(emulator.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for version in VERSIONS:
            for service in ("SessionService", "AgentService", "ToolService"):
                name = f"google.cloud.ces.{version}.{service}"
                assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        listed = {s.name for s in answers[0].list_services_response.service}
        answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="google.cloud.ces.v1beta.SessionService")])))
    assert {f"google.cloud.ces.{v}.{s}" for v in VERSIONS for s in ("SessionService", "AgentService", "ToolService")} <= listed
    assert answers[0].file_descriptor_response.file_descriptor_proto


def test_any_bearer_token_is_accepted_and_ignored(emulator):
    with grpc.insecure_channel(emulator.address) as channel:
        client = ces_v1beta.AgentServiceClient(transport=ces_v1beta.AgentServiceClient.get_transport_class("grpc")(channel=channel))
        apps = client.list_apps(parent="projects/p/locations/us", metadata=[("authorization", "Bearer whatever-you-like")])
        assert [a.name for a in apps]
    status, body, _ = _http(f"{emulator.rest_url}/v1beta/{APP}/tools", headers={"Authorization": "Bearer x"})
    assert status == 200 and body["tools"]


# -- REST as real clients send it ----------------------------------------------------------------

def _http(url: str, body: dict | None = None, headers: dict | None = None, context=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}


def _tls_context(tls_dir) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))


def test_execute_tool_and_run_session_over_https_as_scripts_send_them(emulator, tls_dir):
    base = f"https://localhost:{emulator.tls_port}"
    context = _tls_context(tls_dir)
    status, body, _ = _http(f"{base}/v1beta/{APP}:executeTool?$alt=json;enum-encoding=int",
                            {"tool": f"{APP}/tools/get_flight_status", "args": {"flight_number": "SW12"}},
                            {"Authorization": "Bearer t"}, context)
    assert status == 200 and body["response"], body
    session = f"{APP}/sessions/https-{uuid.uuid4().hex[:8]}"
    # The session name only in the URL; an enum as a number and another as a name.
    status, body, _ = _http(f"{base}/v1beta/{session}:runSession?$alt=json;enum-encoding=int",
                            {"config": {"inputAudioConfig": {"audioEncoding": 1, "sampleRateHertz": 16000},
                                        "outputAudioConfig": {"audioEncoding": "LINEAR16", "sampleRateHertz": 16000}},
                             "inputs": [{"text": TURNS[0]}]}, context=context)
    assert status == 200, body
    assert any("SW12" in o.get("text", "") for o in body["outputs"])


def test_rest_errors_are_googles_json_error_bodies(emulator):
    status, body, _ = _http(f"{emulator.rest_url}/v1beta/{APP}/conversations/no-such-conversation")
    assert status == 404
    error = body["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND" and error["message"]
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    # A method the emulator doesn't serve (v1beta's evaluation datasets) is 501 saying so.
    status, body, _ = _http(f"{emulator.rest_url}/v1beta/{APP}/evaluationDatasets")
    assert status == 501 and body["error"]["status"] == "UNIMPLEMENTED"
    assert "EvaluationService.ListEvaluationDatasets" in body["error"]["message"]
    # The official client reads the detail as the exception's reason.
    agents = ces_v1beta.AgentServiceClient(transport="rest", client_options={"api_endpoint": emulator.rest_url},
                                           credentials=AnonymousCredentials())
    with pytest.raises(exceptions.NotFound) as caught:
        agents.get_conversation(name=f"{APP}/conversations/no-such-conversation")
    assert caught.value.reason == "NOT_FOUND"


# -- TLS: the local CA and the TLS port ----------------------------------------------------------

def test_the_ca_is_private_made_once_and_names_localhost(emulator, tls_dir):
    from cryptography import x509

    from ces_nb.emulator.tls import ensure_tls_files

    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    for key in ("ca-key.pem", "server-key.pem"):
        assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600
    before = (tls_dir / "ca.pem").read_bytes(), (tls_dir / "ca-key.pem").read_bytes()
    files = ensure_tls_files(tls_dir)  # as a second emulator, or `ces-nb env`, would
    assert (files.ca.read_bytes(), (tls_dir / "ca-key.pem").read_bytes()) == before
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert before[0] in files.roots.read_bytes()


def test_a_stalled_or_plain_client_on_the_tls_port_blocks_no_one(emulator, tls_dir):
    stalled = socket.create_connection(("127.0.0.1", emulator.tls_port))  # connects, never says hello
    plain = socket.create_connection(("127.0.0.1", emulator.tls_port))
    plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
    try:
        with _secure_channel(emulator, tls_dir) as channel:
            client = ces_v1.AgentServiceClient(transport=ces_v1.AgentServiceClient.get_transport_class("grpc")(channel=channel))
            assert [a.name for a in client.list_apps(parent="projects/p/locations/us", timeout=20)]
        status, _, _ = _http(f"https://localhost:{emulator.tls_port}/v1/{APP}/tools", context=_tls_context(tls_dir))
        assert status == 200
    finally:
        stalled.close()
        plain.close()


def test_ces_nb_env_points_the_official_client_at_the_emulator(emulator, tls_dir, tmp_path):
    """`eval "$(ces-nb env)"`, then a client configured by the environment alone."""
    script = tmp_path / "client.py"
    script.write_text(
        "import os\n"
        "from google.cloud import ces_v1beta\n"
        "from google.oauth2.credentials import Credentials\n"
        "creds = Credentials(token=os.environ['CXAS_OAUTH_TOKEN'])\n"
        "for transport in ('grpc', 'rest'):\n"
        "    c = ces_v1beta.SessionServiceClient(transport=transport, credentials=creds,\n"
        "                                        client_options={'api_endpoint': os.environ['CES_API_ENDPOINT']})\n"
        f"    r = c.run_session(request={{'config': {{'session': '{APP}/sessions/env-' + transport}}, 'inputs': [{{'text': {TURNS[0]!r}}}]}})\n"
        "    print(transport, ' '.join(o.text for o in r.outputs))\n")
    ces_nb = Path(sys.executable).with_name("ces-nb")
    shell = f'eval "$({ces_nb} env --tls-port {emulator.tls_port} --tls-dir {tls_dir})" && exec {sys.executable} {script}'
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "REQUESTS_CA_BUNDLE")}
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["grpc", "rest"] and all("SW12" in line for line in lines), done.stdout
    printed = subprocess.run([str(ces_nb), "env", "--tls-port", "1234", "--tls-dir", str(tls_dir)], capture_output=True, text=True,
                             timeout=60).stdout
    assert printed.splitlines() == [
        f"export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={tls_dir / 'roots.pem'}",
        f"export REQUESTS_CA_BUNDLE={tls_dir / 'roots.pem'}",
        "export CES_API_ENDPOINT=localhost:1234",
        "export CXAS_OAUTH_TOKEN=ces-nb-emulator",
    ]


def test_the_emulator_prints_the_client_environment_at_start(emulator):
    out = emulator.output()
    assert f"export CES_API_ENDPOINT=localhost:{emulator.tls_port}" in out
    assert "export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=" in out and "export REQUESTS_CA_BUNDLE=" in out


def test_a_taken_tls_port_is_an_error_naming_it(tls_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", ":memory:",
                               "--tls-port", str(port), "--tls-dir", str(tls_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"TLS port {port} on 127.0.0.1 is taken" in done.stderr and "--tls-port 0" in done.stderr


# -- --require-token -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked(tls_dir):
    process = EmulatorProcess("--db", ":memory:", "--require-token", "s3cret", "--tls-port", str(free_port()),
                              "--tls-dir", str(tls_dir), rest_port=0)
    process.tls_port = int(_arg(process.args, "--tls-port"))
    yield process
    process.stop()


def test_require_token_over_grpc(locked, tls_dir):
    request = {"config": {"session": f"{APP}/sessions/locked-{uuid.uuid4().hex[:8]}"}, "inputs": [{"text": TURNS[0]}]}
    with grpc.insecure_channel(locked.address) as channel:
        client = ces_v1beta.SessionServiceClient(transport=ces_v1beta.SessionServiceClient.get_transport_class("grpc")(channel=channel))
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "Basic czNjcmV0")]):
            with pytest.raises(exceptions.Unauthenticated) as caught:
                client.run_session(request=request, metadata=metadata)
            assert "--require-token" in caught.value.message or "Bearer" in caught.value.message
            assert "s3cret" not in caught.value.message
        with pytest.raises(exceptions.Unauthenticated):  # streaming calls too
            list(client.stream_run_session(request=request))
        assert client.run_session(request=request, metadata=[("authorization", "Bearer s3cret")]).outputs
        health = health_pb2_grpc.HealthStub(channel)  # readiness needs no token
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    with _secure_channel(locked, tls_dir, token="s3cret") as channel:  # over TLS, as scrapi sends it
        client = ces_v1.SessionServiceClient(transport=ces_v1.SessionServiceClient.get_transport_class("grpc")(channel=channel))
        assert client.run_session(request=request).outputs


def test_require_token_over_rest(locked, tls_dir):
    url = f"{locked.rest_url}/v1/{APP}/tools"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, body, response_headers = _http(url, headers=headers)
        assert status == 401
        assert body["error"]["status"] == "UNAUTHENTICATED" and body["error"]["code"] == 401 and body["error"]["details"]
        assert response_headers.get("www-authenticate", "").startswith("Bearer")
    status, body, _ = _http(url, headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and body["tools"]
    status, _, _ = _http(f"https://localhost:{locked.tls_port}/v1beta/{APP}/tools", headers={"Authorization": "Bearer s3cret"},
                         context=_tls_context(tls_dir))
    assert status == 200
    # The official client with the token (a 401 would make google-auth try to refresh it).
    tools = ces_v1.AgentServiceClient(transport="rest", client_options={"api_endpoint": locked.rest_url},
                                      credentials=Credentials(token="s3cret")).list_tools(parent=APP)
    assert [t.name for t in tools]
    out = locked.output()
    assert "export CXAS_OAUTH_TOKEN=" in out and "s3cret" not in out  # the start-up lines never echo the token


def test_an_unserved_ces_method_is_unimplemented_saying_what_is_served(emulator):
    with grpc.insecure_channel(emulator.address) as channel:
        evaluations = ces_v1beta.EvaluationServiceClient(
            transport=ces_v1beta.EvaluationServiceClient.get_transport_class("grpc")(channel=channel))
        with pytest.raises(exceptions.MethodNotImplemented) as caught:
            evaluations.list_evaluation_datasets(parent=APP, timeout=10)
        assert "google.cloud.ces.v1beta.EvaluationService.ListEvaluationDatasets is not served" in caught.value.message
        agents = ces_v1.AgentServiceClient(transport=ces_v1.AgentServiceClient.get_transport_class("grpc")(channel=channel))
        with pytest.raises(exceptions.MethodNotImplemented):
            agents.create_app(parent="projects/p/locations/us", app={"display_name": "x"}, timeout=10)
        assert [a.name for a in agents.list_apps(parent="projects/p/locations/us")]  # and the server is fine


def test_v1beta_streaming_and_bidi_sessions(emulator):
    import threading

    name = f"{APP}/sessions/v1beta-bidi-{uuid.uuid4().hex[:8]}"
    answered = threading.Event()

    def requests():
        yield ces_v1beta.BidiSessionClientMessage(config=ces_v1beta.SessionConfig(session=name))
        yield ces_v1beta.BidiSessionClientMessage(realtime_input=ces_v1beta.SessionInput(text=TURNS[0]))
        answered.wait(30)  # then half-close

    with grpc.insecure_channel(emulator.address) as channel:
        client = ces_v1beta.SessionServiceClient(transport=ces_v1beta.SessionServiceClient.get_transport_class("grpc")(channel=channel))
        streamed = list(client.stream_run_session(request={"config": {"session": name + "-stream"}, "inputs": [{"text": TURNS[0]}]},
                                                  timeout=30))
        assert any("SW12" in o.text for r in streamed for o in r.outputs)
        said = []
        for reply in client.bidi_run_session(requests=requests(), timeout=60):
            said.append(reply.session_output.text)
            if reply.session_output.turn_completed:
                answered.set()
    assert any("SW12" in text for text in said) and answered.is_set()
