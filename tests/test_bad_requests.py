"""Bad and hostile requests get the right status and a short, actionable message, and never
hold up other clients."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
import hypothesis
from google.protobuf.internal import encoder
from hypothesis import strategies as st

from conftest import APP, run, texts
from test_async_and_bidi import Bidi


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, written by hand (the official types refuse to build these)."""
    return encoder._VarintBytes((number << 3) | 2) + encoder._VarintBytes(len(payload)) + payload


def _raw_run_session(channel, data: bytes):
    call = channel.unary_unary("/google.cloud.ces.v1.SessionService/RunSession")
    return call(data, timeout=30)


@pytest.mark.parametrize("what, data, says", [
    ("bad UTF-8 in config.session", _field(1, _field(1, b"projects/p/locations/l/apps/skyway/sessions/\xff\xfe")), "bad UTF-8"),
    ("not protobuf at all", b"\xff\xff\xff\xff", "corrupt"),
])
def test_undecodable_requests_are_invalid_argument(channel, what, data, says):
    with pytest.raises(grpc.RpcError) as err:
        _raw_run_session(channel, data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    assert "is not a valid google.cloud.ces.v1.RunSessionRequest" in err.value.details()
    assert says in err.value.details()


def test_too_deep_variables_are_invalid_argument(channel, sessions, session_name):
    value = _field(3, b"x")  # Value.string_value
    for _ in range(300):  # Value.list_value -> ListValue.values -> Value ...
        value = _field(6, _field(1, value))
    variables = _field(1, _field(1, b"deep") + _field(2, value))  # Struct.fields entry
    inputs = ces_v1.RunSessionRequest.pb().DESCRIPTOR.fields_by_name["inputs"].number
    data = _field(1, _field(1, session_name().encode())) + _field(inputs, _field(5, variables))
    with pytest.raises(grpc.RpcError) as err:
        _raw_run_session(channel, data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nest at most 100 deep" in err.value.details()
    assert "welcome" in texts(run(sessions, session_name(), "Hello"))  # and it serves on


def test_echoed_input_is_cut_to_a_short_prefix(sessions):
    long_id = "x" * 5_000  # (the routing header carries it too, under gRPC's 8 KiB metadata limit)
    with pytest.raises(exceptions.InvalidArgument) as err:
        run(sessions, f"{APP}/sessions/{long_id}", "Hello")
    message = err.value.message
    assert "session id 'xxxx" in message and "(5002 chars)" in message
    assert len(message) < 400


def test_text_past_the_turn_limit_is_invalid_argument(sessions, session_name):
    with pytest.raises(exceptions.InvalidArgument, match="a turn takes at most 65536"):
        run(sessions, session_name(), "hello " * 20_000)
    name = session_name()
    fragment = ces_v1.SessionInput(text="word " * 10_000, will_continue=True)
    run(sessions, name, fragment)
    with pytest.raises(exceptions.InvalidArgument, match="with the will_continue fragments before it"):
        run(sessions, name, ces_v1.SessionInput(text="word " * 10_000))
    assert "welcome" in texts(run(sessions, name, "Hello"))  # the dropped fragments are gone


def test_large_variables_are_invalid_argument(sessions, session_name):
    big = {f"k{i}": "v" * 100 for i in range(3_000)}
    with pytest.raises(exceptions.InvalidArgument, match="at most 256 KiB of variables"):
        run(sessions, session_name(), ces_v1.SessionInput(variables=big))


def test_large_tool_args_are_invalid_argument(tools):
    request = ces_v1.ExecuteToolRequest(tool=f"{APP}/tools/get_flight_status", args={"flight_number": "x" * 300_000})
    with pytest.raises(exceptions.InvalidArgument, match="at most 256 KiB of args"):
        tools.execute_tool(request=request, timeout=30)


def test_an_oversized_input_is_refused_from_the_request_bytes(channel):
    """input_limits.early_refusal reads an input's size from the request's bytes, before the
    request is parsed: the refusal comes even though the rest of this one would not parse (bad
    UTF-8 in config.session), and the 2 MiB of variables are never built."""
    variables = ces_v1.SessionInput.serialize(ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(20_000)}))
    inputs = ces_v1.RunSessionRequest.pb().DESCRIPTOR.fields_by_name["inputs"].number
    data = _field(1, _field(1, f"{APP}/sessions/\xff".encode("latin-1"))) + _field(inputs, _field(1, b"Hi")) + _field(inputs, variables)
    with pytest.raises(grpc.RpcError) as err:
        _raw_run_session(channel, data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("inputs[1] is 2.16 MiB; the emulator takes at most 256 KiB of variables per input: "
                                   "send a smaller variables")


def test_oversized_inputs_are_refused_on_every_path_and_maximal_ones_answered(sessions, tools, session_name):
    image = ces_v1.SessionInput(image=ces_v1.Image(mime_type="image/png", data=b"\x89PNG" + bytes(9 << 20)))
    with pytest.raises(exceptions.InvalidArgument, match=r"inputs\[0\] is 9 MiB; the emulator takes at most 8 MiB of image"):
        run(sessions, session_name(), image)
    request = ces_v1.RunSessionRequest(config={"session": session_name()}, inputs=[{"variables": {f"k{i}": "v" * 100 for i in range(3_000)}}])
    with pytest.raises(exceptions.InvalidArgument, match="at most 256 KiB of variables"):
        list(sessions.stream_run_session(request=request, timeout=30))
    with Bidi(sessions) as bidi:
        bidi.send(config=ces_v1.SessionConfig(session=session_name()))
        bidi.send(realtime_input=ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(3_000)}))
        replies = bidi.turn()
    error = next(r for r in replies if isinstance(r, Exception))
    assert isinstance(error, exceptions.InvalidArgument) and "inputs[0] is 330 KiB" in error.message
    maximal = {f"k{i}": "v" * 100 for i in range(2_300)}  # just under 256 KiB: the check on the request's bytes lets it through
    assert "welcome" in texts(run(sessions, session_name(), ces_v1.SessionInput(variables=maximal), "Hello"))
    request = ces_v1.ExecuteToolRequest(tool=f"{APP}/tools/get_flight_status", args={"flight_number": "x" * 250_000})
    assert tools.execute_tool(request=request, timeout=30).tool.endswith("/tools/get_flight_status")
    request = ces_v1.ExecuteToolRequest(tool=f"{APP}/tools/get_flight_status", args={"flight_number": "SW1"},
                                        variables={f"k{i}": "v" * 100 for i in range(3_000)})
    with pytest.raises(exceptions.InvalidArgument, match="a tool takes at most 256 KiB of variables: send fewer"):
        tools.execute_tool(request=request, timeout=30)


def test_a_maximal_text_turn_does_not_hold_up_other_sessions(sessions, session_name):
    """Before: a 1 MB text took seconds of the event loop. The longest text allowed now answers,
    and a neighbour's turn completes while it runs."""
    done = {}

    def heavy():
        done["heavy"] = texts(run(sessions, session_name(), "hello " * 10_900))

    thread = threading.Thread(target=heavy)
    thread.start()
    neighbour = texts(run(sessions, session_name(), "Hello"))
    thread.join(60)
    assert "welcome" in neighbour and "welcome" in done["heavy"]


def test_a_pathological_mock_pattern_runs_in_linear_time(tools):
    """`(a|a)+b` backtracks exponentially in Python's re; on RE2 it is linear. The answer is the
    right one: no match, so the unmatched behaviour applies."""
    request = ces_v1.ExecuteToolRequest(
        tool=f"{APP}/tools/get_flight_status",
        args={"flight_number": "a" * 40},
        mock_config=ces_v1.MockConfig(
            mocked_tool_calls=[ces_v1.MockedToolCall(tool_id="get_flight_status", expected_args_pattern={"flight_number": "(a|a)+b"},
                                                     mock_response={"status": "mocked"})],
            unmatched_tool_call_behavior=ces_v1.MockConfig.UnmatchedToolCallBehavior.FAIL,
        ),
    )
    with pytest.raises(exceptions.FailedPrecondition, match="no mocked call"):
        tools.execute_tool(request=request, timeout=30)
    request.args = {"flight_number": "a" * 40 + "b"}
    assert tools.execute_tool(request=request, timeout=30).response["status"] == "mocked"


def test_no_input_is_taken_after_end_session(sessions, session_name):
    name = session_name()
    bye = run(sessions, name, "That's all, thanks. Goodbye!")
    assert any(ces_v1.SessionOutput.pb(o).HasField("end_session") for o in bye)
    with pytest.raises(exceptions.FailedPrecondition, match="ended in turn 1 .end_session.: the agent takes no more input"):
        run(sessions, name, "Hello again")


def test_a_corrupt_audio_chunk_is_reported_in_the_turns_diagnostic_info(sessions, session_name):
    with Bidi(sessions) as bidi:
        bidi.send(config=ces_v1.SessionConfig(
            session=session_name(),
            input_audio_config=ces_v1.InputAudioConfig(audio_encoding=ces_v1.AudioEncoding.LINEAR16, sample_rate_hertz=16000),
        ))
        bidi.send(realtime_input=ces_v1.SessionInput(audio=b"\x01\x02\x03"))  # not whole 16-bit samples
        bidi.send(realtime_input=ces_v1.SessionInput(text="Hello"))
        replies = bidi.turn()
    last = replies[-1].session_output
    assert last.turn_completed
    root = last.diagnostic_info.root_span
    warnings = [s for s in root.child_spans if s.name == "Warning"]
    assert warnings and "not whole LINEAR16 samples" in warnings[0].attributes["message"]
    assert "not whole LINEAR16 samples" in root.attributes["warnings"][0]



_INPUTS = st.one_of(
    st.builds(lambda n, c: ces_v1.SessionInput(text=c * n), st.sampled_from([1, 900, 70_000, 140_000]), st.sampled_from(["a", "é", "日"])),
    st.builds(lambda n: ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(n)}), st.sampled_from([1, 2_300, 2_700])),
    st.builds(lambda n: ces_v1.SessionInput(blob=ces_v1.Blob(mime_type="application/pdf", data=bytes(n))), st.sampled_from([10, 300_000])),
    st.builds(lambda n: ces_v1.SessionInput(dtmf="1" * n), st.sampled_from([3, 70_000])),
)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(_INPUTS, min_size=1, max_size=3))
@hypothesis.example([ces_v1.SessionInput(text="a" * 70_000), ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(2_700)})])
@hypothesis.example([ces_v1.SessionInput(text="  "), ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(2_700)})])
def test_the_refusal_from_wire_bytes_is_the_one_the_parsed_request_gets(inputs):
    """input_limits reads sizes from the framing of the request's bytes; the runtime checks the
    parsed request: the same first refusal (or none) either way."""
    from ces_nb.emulator.errors import EmulatorError
    from ces_nb.emulator.input_limits import early_refusal
    from ces_nb.emulator.runtime import _validate_inputs

    request = ces_v1.RunSessionRequest(config={"session": f"{APP}/sessions/s"}, inputs=inputs)
    early = early_refusal(ces_v1.RunSessionRequest, ces_v1.RunSessionRequest.serialize(request))
    try:
        _validate_inputs(list(request.inputs))
        parsed = None
    except EmulatorError as exc:
        parsed = exc.message
    assert (early.message if early else None) in (parsed, None)
    if parsed is not None and "the emulator takes at most" in parsed:
        assert early is not None and early.message == parsed  # a byte limit: caught from the bytes


def _varint_field(number: int, value: int) -> bytes:
    return encoder._VarintBytes(number << 3) + encoder._VarintBytes(value)


def _parsed_refusal(data: bytes) -> str | None:
    """What the runtime's checks say of the parsed request (None: they accept it)."""
    from ces_nb.emulator.errors import EmulatorError
    from ces_nb.emulator.runtime import _validate_inputs

    try:
        _validate_inputs(list(ces_v1.RunSessionRequest.deserialize(data).inputs))
    except EmulatorError as exc:
        return exc.message
    return None


def _input_number(name: str) -> int:
    return ces_v1.SessionInput.pb().DESCRIPTOR.fields_by_name[name].number


def test_the_wire_check_frames_a_bounded_number_of_fields_then_leaves_it_to_the_parser(monkeypatch):
    """Framing runs in Python: a request of a million tiny (unknown) fields must not be walked to
    its end on the event loop; past MAX_FIELDS_FRAMED the full parse, in C, decides."""
    from ces_nb.emulator import input_limits

    calls = []
    real = input_limits._DecodeVarint
    monkeypatch.setattr(input_limits, "_DecodeVarint", lambda data, pos: calls.append(pos) or real(data, pos))
    inputs = ces_v1.RunSessionRequest.pb().DESCRIPTOR.fields_by_name["inputs"].number
    tiny = _varint_field(900, 1) * 400_000  # field 900: unknown to SessionInput; 1.2 MB of them
    data = _field(inputs, ces_v1.SessionInput.serialize(ces_v1.SessionInput(text="Hi"))) + _field(inputs, tiny)
    assert input_limits.early_refusal(ces_v1.RunSessionRequest, data) is None
    assert len(calls) <= 3 * input_limits.MAX_FIELDS_FRAMED + 10  # a tag, a value or a length per field
    assert _parsed_refusal(data).startswith("inputs[1] is empty")  # the parser's word, not a stall


def test_the_wire_check_says_what_the_parsed_request_would_for_odd_encodings():
    from ces_nb.emulator.input_limits import early_refusal

    inputs = ces_v1.RunSessionRequest.pb().DESCRIPTOR.fields_by_name["inputs"].number
    big_vars = ces_v1.SessionInput.serialize(ces_v1.SessionInput(variables={f"k{i}": "v" * 100 for i in range(2_700)}))
    text = lambda t: _field(_input_number("text"), t.encode())  # noqa: E731
    cases = {
        # a blank text that continues is no error of its own: the oversized variables after it are
        "blank text, will_continue": _field(inputs, text("   ") + _varint_field(_input_number("will_continue"), 1)) + _field(inputs, big_vars),
        # one input, two members: the parser keeps the last (small variables): nothing to refuse
        "image, then variables": _field(inputs, _field(_input_number("image"), ces_v1.Image.serialize(
            ces_v1.Image(mime_type="image/png", data=bytes(300_000)))) + _field(_input_number("variables"), b"")),
        # variables twice in one input: merged by the parser
        "variables twice": _field(inputs, big_vars + big_vars),
    }
    for what, data in cases.items():
        early = early_refusal(ces_v1.RunSessionRequest, data)
        assert (early.message if early else None) in (_parsed_refusal(data), None), what
    assert early_refusal(ces_v1.RunSessionRequest, cases["blank text, will_continue"]).message.startswith("inputs[1] is 297 KiB")
    # an oversized text before bytes that do not frame: the parser's verdict (corrupt), not the size
    oversized = _field(inputs, text("a" * 300_000))
    assert early_refusal(ces_v1.RunSessionRequest, oversized).message.startswith("inputs[0].text is 300000 characters")
    assert early_refusal(ces_v1.RunSessionRequest, oversized + b"\x0f\x01") is None
