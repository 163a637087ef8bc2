"""`ces-nb emulator --model openai/NAME --model-base-url URL`: the app runs on a real model
through ADK's LiteLlm, as it would on CES.

No LLM exists offline, so the one fake here is the model: a small OpenAI-compatible server
(`/v1/chat/completions`) that answers from a script. Everything else is real: the emulator
process, the official gRPC client, the app's python tool in its sandbox, ADK's transfer, the
spans. The fake records what reached it, so the tests also check that the app's instructions and
tool declarations got to the model. A recording proxy set for the emulator catches any download
LiteLLM might try (its price map, tiktoken files, Hugging Face tokenizers): there must be none.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
import time

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from conftest import APP, kind, run, texts
from emulator_process import EmulatorProcess, free_port


MODEL = "openai/fake"
# get_flight_status("SW12"), as the demo app's python tool computes it.
SW12 = {"flight_number": "SW12", "status": "delayed 25 minutes", "gate": "A13", "departure_time": "18:24"}
BOOKING_REPLY = "Booking Agent here: which flight and cabin would you like?"


class FakeModel(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """An OpenAI-compatible chat-completions server that scripts the model, and records each request."""

    daemon_threads = True

    def __init__(self, stream_usage: bool = True):
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.stream_usage = stream_usage  # False: streams carry no usage, as some servers do
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, body: dict) -> dict:
        """The scripted model: the next message, from what the conversation holds so far."""
        messages = body.get("messages", [])
        system = " ".join(_text(m) for m in messages if m.get("role") == "system")
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":  # the tool's result came back: quote it
            result = json.loads(_text(last))
            return _reply(f"Flight {result['flight_number']} is {result['status']}, gate {result['gate']}, "
                          f"departing at {result['departure_time']}.")
        if "You book seats" in system:  # the booking agent, after the transfer
            return _reply(BOOKING_REPLY)
        user = _text(last).lower()
        if "seat" in user:
            return _reply(None, {"name": "transfer_to_agent", "arguments": json.dumps({"agent_name": "Booking_Agent"})})
        if "flight" in user:
            return _reply(None, {"name": "get_flight_status", "arguments": json.dumps({"flight_number": "SW12"})})
        return _reply("Hello from the fake model.")


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        server: FakeModel = self.server  # type: ignore[assignment]
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "authorization": self.headers.get("Authorization")})
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        message = server.answer(body)
        completion = {
            "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
        }
        if not body.get("stream"):
            return self._send(200, completion)
        # Server-sent events, as OpenAI streams: the message in one delta, then the usage, then [DONE].
        chunk = {**completion, "object": "chat.completion.chunk"}
        delta = dict(message)
        if delta.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(delta["tool_calls"])]
        events = [
            {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "usage": None},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": completion["choices"][0]["finish_reason"]}], "usage": None},
        ]
        if server.stream_usage:
            events.append({**chunk, "choices": [], "usage": completion["usage"]})
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send_raw(200, data.encode(), "text/event-stream")

    def _send(self, status: int, payload: dict) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):  # quiet
        pass


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _reply(text: str | None, call: dict | None = None) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if call:
        message["tool_calls"] = [{"id": f"call_{call['name']}", "type": "function", "function": call}]
    return message


class RecordingProxy:
    """What the emulator is told is its HTTP(S) proxy: records every connection, answers 403.
    A download attempt (price map, tiktoken, Hugging Face) shows up here instead of hanging."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096).decode("latin-1").split("\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def fake_model():
    server = FakeModel()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy():
    p = RecordingProxy()
    yield p
    p.close()


def offline_emulator(proxy: RecordingProxy, *args: str) -> EmulatorProcess:
    """An emulator whose only way out is the recording proxy (localhost is reached directly)."""
    with pytest.MonkeyPatch.context() as env:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.setenv(var, proxy.url)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        for var in ("OPENAI_API_KEY", "LITELLM_LOCAL_MODEL_COST_MAP", "HF_HUB_OFFLINE", "LITELLM_MODE"):
            env.delenv(var, raising=False)
        return EmulatorProcess(*args, "--db", ":memory:", timeout=30)


@pytest.fixture(scope="module")
def real_emulator(fake_model, proxy):
    process = offline_emulator(proxy, "--model", MODEL, "--model-base-url", fake_model.base_url)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def real_sessions(real_emulator):
    channel = grpc.insecure_channel(real_emulator.address)
    yield ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    channel.close()


def _session(name: str) -> str:
    return f"{APP}/sessions/real-model-{name}-{time.time_ns()}"


def _spans(span: ces_v1.Span) -> list[ces_v1.Span]:
    out = [span]
    for child in span.child_spans:
        out.extend(_spans(child))
    return out


def _completions_since(fake_model: FakeModel, n: int) -> list[dict]:
    with fake_model.lock:
        return [r["body"] for r in fake_model.requests[n:] if r["path"].endswith("/chat/completions")]


@pytest.mark.timeout(60)
def test_the_python_tool_really_runs_and_its_output_reaches_the_answer(real_sessions, fake_model, proxy):
    before = len(fake_model.requests)
    started = time.monotonic()
    outputs = run(real_sessions, _session("flight"), "What is the status of my flight SW12?")
    assert time.monotonic() - started < 30
    answer = texts(outputs)
    # The tool's real output (computed by the export's python code in its sandbox), quoted by the model.
    assert "delayed 25 minutes" in answer and "gate A13" in answer and "18:24" in answer, answer
    last = outputs[-1]
    assert last.turn_completed
    chunks = [c for m in last.diagnostic_info.messages for c in m.chunks]
    calls = [c.tool_call for c in chunks if ces_v1.Chunk.pb(c).WhichOneof("data") == "tool_call"]
    responses = [c.tool_response for c in chunks if ces_v1.Chunk.pb(c).WhichOneof("data") == "tool_response"]
    assert [c.display_name for c in calls] == ["get_flight_status"]
    assert dict(calls[0].args) == {"flight_number": "SW12"}
    assert dict(responses[0].response) == SW12
    spans = _spans(last.diagnostic_info.root_span)
    llm = [s for s in spans if s.name == "LLM"]
    tool = [s for s in spans if s.name == "Tool"]
    assert len(llm) == 2, [s.name for s in spans]
    assert all(s.attributes["model"] == MODEL for s in llm), [dict(s.attributes) for s in llm]
    assert len(tool) == 1, [s.name for s in spans]
    attributes = ces_v1.Span.to_dict(tool[0])["attributes"]  # args/response are nested objects
    assert attributes["name"] == "get_flight_status" and attributes["args"] == {"flight_number": "SW12"}, attributes

    # What reached the model: the app's instructions (CES {variables} filled from session state,
    # the global instruction first), the root agent's tools with their declarations, the user's
    # words, and the tool's result on the second call.
    first, second = _completions_since(fake_model, before)
    system = " ".join(_text(m) for m in first["messages"] if m["role"] == "system")
    assert "You work for SkyWay Air. Be brief, friendly and precise." in system
    assert "You are the SkyWay Air concierge." in system
    assert "Greet traveler by name." in system  # {customer_name}: the variable's default
    assert "{customer_name}" not in system
    tools = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert {"get_flight_status", "search_policies", "travel_search", "end_session", "transfer_to_agent"} <= set(tools)
    flight = tools["get_flight_status"]
    assert "Looks up the live status of a SkyWay Air flight." in flight["description"]
    assert "flight_number" in flight["parameters"]["properties"]
    assert "SW12" in _text(first["messages"][-1])
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(_text(tool_message)) == SW12
    # Nothing was downloaded (nor tried): no connection went to the proxy.
    assert proxy.seen == []


@pytest.mark.timeout(60)
def test_instructions_take_the_session_variables(real_sessions, fake_model):
    before = len(fake_model.requests)
    run(real_sessions, _session("vars"), ces_v1.SessionInput(variables={"customer_name": "Ada"}), "Hi")
    (request,) = _completions_since(fake_model, before)
    system = " ".join(_text(m) for m in request["messages"] if m["role"] == "system")
    assert "Greet Ada by name." in system


@pytest.mark.timeout(60)
def test_a_transfer_reaches_the_booking_agent(real_sessions, fake_model):
    before = len(fake_model.requests)
    outputs = run(real_sessions, _session("seat"), "I want to book a seat")
    assert BOOKING_REPLY in texts(outputs)
    chunks = [c for m in outputs[-1].diagnostic_info.messages for c in m.chunks]
    transfers = [c.agent_transfer for c in chunks if ces_v1.Chunk.pb(c).WhichOneof("data") == "agent_transfer"]
    assert [t.display_name for t in transfers] == ["Booking Agent"]
    first, second = _completions_since(fake_model, before)
    booking_system = " ".join(_text(m) for m in second["messages"] if m["role"] == "system")
    assert "You book seats for SkyWay Air customers." in booking_system
    assert {"select_seat", "confirm_payment"} <= {t["function"]["name"] for t in second["tools"]}


@pytest.mark.timeout(60)
def test_text_streaming_streams_from_the_model(real_sessions, fake_model):
    before = len(fake_model.requests)
    request = ces_v1.RunSessionRequest(config=ces_v1.SessionConfig(session=_session("stream"), enable_text_streaming=True),
                                       inputs=[ces_v1.SessionInput(text="Status of flight SW12 please")])
    outputs = [o for r in real_sessions.stream_run_session(request=request) for o in r.outputs]
    answer = "".join(o.text for o in outputs if kind(o) == "text")
    assert "delayed 25 minutes, gate A13" in answer, answer
    assert answer.count("delayed 25 minutes") == 1  # streamed once, not again when the event completes
    assert outputs[-1].turn_completed and not any(o.turn_completed for o in outputs[:-1])
    assert [r["stream"] for r in _completions_since(fake_model, before)] == [True, True]


@pytest.mark.timeout(60)
def test_nothing_downloads_when_litellm_counts_tokens_itself(proxy):
    """A stream without usage has LiteLLM count the tokens; for a model named like llama-3 it
    would fetch a tokenizer from the Hugging Face hub (it did, before the emulator set HF_HUB_OFFLINE)."""
    fake = FakeModel(stream_usage=False)
    process = offline_emulator(proxy, "--model", "openai/llama-3-fake", "--model-base-url", fake.base_url)
    try:
        channel = grpc.insecure_channel(process.address)
        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        request = ces_v1.RunSessionRequest(config=ces_v1.SessionConfig(session=_session("llama"), enable_text_streaming=True),
                                           inputs=[ces_v1.SessionInput(text="Hello")])
        started = time.monotonic()
        outputs = [o for r in client.stream_run_session(request=request) for o in r.outputs]
        assert time.monotonic() - started < 10
        assert "Hello from the fake model." in "".join(o.text for o in outputs if kind(o) == "text")
        llm = [s for s in _spans(outputs[-1].diagnostic_info.root_span) if s.name == "LLM"]
        assert llm and llm[0].attributes["model"] == "openai/llama-3-fake"
        channel.close()
    finally:
        process.stop()
        fake.close()
    assert proxy.seen == []


@pytest.mark.timeout(60)
def test_an_unreachable_model_fails_the_turn_with_unavailable_and_the_emulator_keeps_serving():
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    process = EmulatorProcess("--model", MODEL, "--model-base-url", dead, "--db", ":memory:", timeout=30)
    try:
        channel = grpc.insecure_channel(process.address)
        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        for attempt in range(2):  # the same answer each time: the emulator is still there
            started = time.monotonic()
            with pytest.raises(Exception) as info:
                run(client, _session(f"dead-{attempt}"), "Hello")
            assert time.monotonic() - started < 20
            error = info.value
            assert getattr(error, "grpc_status_code", None) == grpc.StatusCode.UNAVAILABLE, repr(error)
            message = str(getattr(error, "message", error))
            assert dead in message and "unreachable" in message and "--model-base-url" in message, message
        assert process.proc.poll() is None
        log = process.output()
        assert "turn failed: the model openai/fake at" in log and "Traceback" not in log, log[-3000:]
    finally:
        channel.close()
        process.stop()


def _cli(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


@pytest.mark.timeout(120)
def test_model_flags_that_cannot_work_exit_2_saying_what_to_pass():
    code, err = _cli("--model-base-url", "http://localhost:11434/v1")
    assert code == 2 and "go with --model" in err, err
    code, err = _cli("--model", "llama3.2", "--model-base-url", "http://localhost:11434/v1")
    assert code == 2 and "--model openai/llama3.2" in err, err
    code, err = _cli("--model", "openai/x", "--model-base-url", "http://localhost:1/v1", "--model-api-key-env", "CES_NB_NO_SUCH_VAR")
    assert code == 2 and "CES_NB_NO_SUCH_VAR" in err and "not set" in err, err
