"""ces_nb.connect / Session against a real emulator process and the official clients."""

from __future__ import annotations

import socket
import textwrap

import grpc
import pytest
from google.api_core import exceptions

import ces_nb
from ces_nb.errors import CesError, explain
from ces_nb.local_emulator import ENV_ADDRESS, ensure_emulator, is_listening
from ces_nb.model import Transcript

from conftest import APP, EmulatorProcess

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def client(emulator):
    c = ces_nb.connect(APP, endpoint=emulator.address)
    yield c
    c.close()


def test_connect_endpoint_holds_the_official_clients(client, emulator):
    from google.cloud import ces_v1

    assert isinstance(client.sessions, ces_v1.SessionServiceClient)
    assert isinstance(client.agents, ces_v1.AgentServiceClient)
    assert isinstance(client.tools, ces_v1.ToolServiceClient)
    assert client.app == APP and client.target == emulator.address
    assert APP in client.apps("projects/test-project/locations/us")


def test_session_send_text_and_history(client):
    session = client.session()
    first = session.send("Hello")
    second = session.send("What's the status of flight SW12?")
    assert first.index == 1 and second.index == 2 and session.turns == [first, second]
    assert "traveler" in first.text and "SW12" in second.text
    assert second.root_span.name == "root" and any(s.kind == "Tool" for _, s in second.root_span.walk())
    assert session.name.startswith(APP + "/sessions/")


def test_every_input_kind_and_config_field(client, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    session = client.session(time_zone="Europe/Paris", use_tool_fakes=False, deployment="",
                             remote_dialogflow_query_parameters={"webhook_headers": {"x": "y"}, "payload": {"a": 1}},
                             historical_contexts=[{"role": "user", "chunks": [{"text": "earlier"}]}])
    config = session.session_config()
    assert config.time_zone == "Europe/Paris" and config.historical_contexts[0].chunks[0].text == "earlier"
    assert config.remote_dialogflow_query_parameters.webhook_headers["x"] == "y"
    turn = session.send("Hello", variables={"customer_name": "Ada"})
    assert "Ada" in turn.text and [i.kind for i in turn.inputs] == ["variables", "text"]
    assert session.send(dtmf="12#").inputs[0].value == "12#"
    assert session.send(event="welcome").inputs[0].value == "welcome"
    assert session.send("What is this?", image=str(image)).inputs[1].value == ("image/png", PNG)
    assert session.send(blob=b"%PDF-1.4").inputs[0].value == ("application/octet-stream", b"%PDF-1.4")
    with pytest.raises(TypeError, match="unknown SessionConfig field"):
        client.session(colour="blue")
    with pytest.raises(ValueError, match="nothing to send"):
        session.send()
    with pytest.raises(FileNotFoundError, match="no image file"):
        session.send(image=str(tmp_path / "missing.png"))


def test_tool_call_round_trip_and_pending(client):
    session = client.session()
    session.send("I'd like to book a seat on flight SW123")
    calls = session.pending
    assert [c.name for c in calls.values()] == ["select_seat"]
    (call_id,) = calls
    turn = session.respond({call_id: {"seat": "3A", "confirmed": True, "price": 99.0}})
    assert "3A" in turn.text and session.pending == {}
    tool_response = turn.inputs[0].value[0]
    assert tool_response.tool.endswith("select_seat")  # named from the pending call


def test_stream_updates_as_outputs_arrive(client):
    session = client.session(enable_text_streaming=True)
    seen: list[int] = []
    turn = session.stream("How many bags can I check?", on_output=lambda t: seen.append(len(t.outputs)))
    assert turn.completed and not turn.partial and turn.citations
    assert len(seen) > 2 and seen == sorted(seen)
    assert "23 kg" in turn.text


def test_save_and_load_round_trip(client, tmp_path):
    session = client.session()
    session.send("Hello")
    session.send("How many bags can I check?")
    loaded = Transcript.load(session.save(tmp_path / "s.json"))
    assert loaded == session.transcript and loaded.session == session.name
    assert loaded[1].citations == session.turns[1].citations


def test_unavailable_says_to_start_the_emulator():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    client = ces_nb.connect(APP, endpoint=f"127.0.0.1:{port}")
    with pytest.raises(CesError, match="ces-nb emulator") as info:
        client.session().send("hi")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_unknown_app_is_named(client):
    with pytest.raises(CesError, match="nope") as info:
        client.session("nope").send("hi")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "client.apps()" in str(info.value)


def test_unauthenticated_explains_gcloud_login():
    error = explain(exceptions.Unauthenticated("Request had invalid authentication credentials."))
    assert "gcloud auth application-default login" in str(error)


def test_real_ces_without_credentials_says_how_to_log_in(monkeypatch, tmp_path):
    # No ADC file, no metadata server probing: what a laptop without gcloud looks like.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(CesError, match="gcloud auth application-default login"):
        ces_nb.connect("projects/p/locations/us/apps/a")


def test_real_ces_uses_the_regional_endpoint():
    from google.oauth2.credentials import Credentials

    client = ces_nb.connect("projects/p/locations/eu/apps/a", credentials=Credentials(token="t"))
    assert client.target == "ces.eu.rep.googleapis.com" and client.app == "projects/p/locations/eu/apps/a"
    assert client.sessions.api_endpoint == "ces.eu.rep.googleapis.com"
    with pytest.raises(ValueError, match="projects/PROJECT/locations/LOCATION/apps/APP"):
        ces_nb.connect("skyway", credentials=Credentials(token="t"))


def test_connect_starts_an_emulator_once_and_reuses_it(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(ENV_ADDRESS, address)
    assert not is_listening(address)
    client = ces_nb.connect()
    try:
        assert is_listening(address) and client.app.endswith("/apps/skyway")
        assert ensure_emulator(address) == address  # idempotent: no second server
        assert "traveler" in client.session().send("Hello").text
    finally:
        client.close()
        from ces_nb import local_emulator

        proc = local_emulator._started.pop(address)
        local_emulator._stop(proc)


SLOW_APP = {
    "app.yaml": """
        name: slowpoke
        displayName: Slowpoke
        rootAgent: Slow Agent
    """,
    "agents/slow_agent/slow_agent.yaml": """
        displayName: Slow Agent
        instruction: Answers slowly.
        tools: [slow_tool]
    """,
    "tools/slow_tool/slow_tool.yaml": """
        displayName: slow_tool
        pythonFunction:
          name: slow_tool
          pythonCode: |
            def slow_tool(query: str) -> dict:
                \"\"\"Takes its time.\"\"\"
                import time
                time.sleep(30)
                return {"answer": "late"}
    """,
    "examples/slow/slow.yaml": """
        displayName: slow
        messages:
        - role: user
          chunks: [{text: "please look this up slowly"}]
        - role: agent
          chunks:
          - text: "Working on it now, this takes a moment, please hold the line for me."
          - toolCall: {tool: slow_tool, args: {query: "x"}}
          - toolResponse: {tool: slow_tool, response: {answer: "late"}}
          - text: "The answer is {answer}."
    """,
}


def test_partial_turn_when_the_server_dies_mid_stream(tmp_path):
    for rel, body in SLOW_APP.items():
        path = tmp_path / "slowpoke" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    server = EmulatorProcess("--app", str(tmp_path / "slowpoke"), "--db", ":memory:")
    try:
        client = ces_nb.connect("projects/p/locations/us/apps/slowpoke", endpoint=server.address)
        session = client.session(enable_text_streaming=True)

        def kill_on_first_output(turn):
            if server.proc.poll() is None:
                server.proc.kill()  # a real crash: no go_away, no goodbye

        turn = session.stream("please look this up slowly", on_output=kill_on_first_output)
        assert turn.partial and not turn.completed
        assert turn.outputs and turn.text.startswith("Working")
        assert "ces-nb emulator" in turn.error
        assert session.turns[-1] is turn.record
        assert "partial" in turn._repr_mimebundle_()["text/plain"]
        assert 'class="ces-error"' in turn._repr_mimebundle_()["text/html"]
        client.close()
    finally:
        server.stop()


def test_resource_names_go_through_the_generated_path_helpers():
    from google.cloud.ces_v1 import AgentServiceClient, SessionServiceClient

    from ces_nb.client import app_parent, parse_app, parse_conversation, session_path

    assert parse_app("projects/p/locations/eu/apps/a") == AgentServiceClient.parse_app_path("projects/p/locations/eu/apps/a")
    for bad in ("projects/p/apps/a", "projects/p/locations/l/apps/a/sessions/s", "", "projects//locations/l/apps/a"):
        assert parse_app(bad) == {}, bad
    assert parse_conversation("projects/p/locations/l/apps/a/conversations/c")["conversation"] == "c"
    assert app_parent("projects/p/locations/eu/apps/a") == "projects/p/locations/eu"
    assert session_path("projects/p/locations/eu/apps/a", "s1") == SessionServiceClient.session_path("p", "eu", "a", "s1")
    with pytest.raises(ValueError, match="not an app name"):
        ces_nb.connect("projects/p/apps/a")
