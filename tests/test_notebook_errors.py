"""The notebook side of failures: a clear error that says what to do instead, and nothing lost.

%ces mistakes are UsageErrors with the command to type; Python API failures are CesErrors whose
traceback is the message, not the gRPC chain; a transcript with one bad turn still renders the
others; a live stream that died says so, and why; turn numbers stay unique across reconnects.
Everything runs against real emulator processes over real sockets.
"""

from __future__ import annotations

import json
import re
import time
import traceback

import grpc
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ces_nb
from ces_nb import CesError
from ces_nb.model import TextOutput, Transcript, Turn, TranscriptError, UserInput

from conftest import APP
from emulator_process import EmulatorProcess, free_port

DEEP = "[" * 10_000 + "]" * 10_000


@pytest.fixture
def client(emulator):
    c = ces_nb.connect(APP, endpoint=emulator.address)
    yield c
    c.close()


# -- %ces: UsageErrors that say what to type ---------------------------------------------------

def test_save_to_a_missing_folder_or_a_folder_is_a_usage_error_saying_what_to_do(ip, tmp_path):
    ip.run_line_magic("ces", "Hello")
    missing = tmp_path / "no" / "such"
    with pytest.raises(UsageError, match=re.escape(f"no folder {missing}: create it first")) as err:
        ip.run_line_magic("cescmd", f"save {missing / 'trip.json'}")
    assert "%cescmd save trip.json" in str(err.value)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path} is a folder")) as err:
        ip.run_line_magic("cescmd", f"save {tmp_path}")
    assert f"%cescmd save {tmp_path / 'trip.json'}" in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no folder {missing}: create it first")):
        ces_nb.Transcript().save(missing / "trip.json")  # the Python API says it too
    assert not missing.exists()


def test_audio_flag_with_a_file_that_is_not_audio_is_a_usage_error(ip, tmp_path, client):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a sound\n" * 20)
    with pytest.raises(UsageError, match=re.escape(f"{notes} is not audio")) as err:
        ip.run_line_magic("ces", f"--audio {notes}")
    assert "WAV" in str(err.value) and '%cescmd say What' in str(err.value)
    # the Python API: a ValueError naming the file, before anything is sent
    session = client.session()
    with pytest.raises(ValueError, match=re.escape(f"{notes} is not audio")):
        session.send_audio(str(notes))
    assert session.turns == []


@pytest.mark.parametrize("line, words", [
    (f"--vars '{{\"a\": {DEEP}}}' Hello", "--vars nests 10001 levels deep"),
    ("--vars '{\"a\": " + "[" * 60 + "]" * 60 + "}'", "--vars nests 61 levels deep"),
    (f"new --vars '{{\"a\": {DEEP}}}'", "--vars nests 10001 levels deep"),
    (f"mock get_flight_status --response '{{\"a\": {DEEP}}}'", "--response nests 10001 levels deep"),
])
def test_too_deep_json_is_a_usage_error_saying_how_deep_is_allowed(ip, line, words):
    magic = "cescmd" if line.startswith(("new ", "mock ")) else "ces"
    with pytest.raises(UsageError, match=re.escape(words)) as err:
        ip.run_line_magic(magic, line)
    assert "at most 32" in str(err.value) and "'{\"" in str(err.value)


def test_too_deep_variables_from_python_are_a_value_error(client):
    deep: list = []
    for _ in range(60):
        deep = [deep]
    session = client.session()
    with pytest.raises(ValueError, match="variables nest more than 32 levels deep; CES takes at most 32"):
        session.send("Hello", variables={"a": deep})
    assert session.send("Hello", variables={"a": [[[1]]]}).index == 1


# -- Python API: the message, not the gRPC chain ------------------------------------------------

def _failed_call(client) -> CesError:
    session = client.session("nosuchapp")
    with pytest.raises(CesError) as err:
        session.send("Hello")
    return err.value


def test_ces_error_traceback_is_the_message_and_keeps_the_grpc_error_quietly(client):
    err = _failed_call(client)
    text = "".join(traceback.format_exception(err))
    assert "not found" in text and "nosuchapp" in text
    for chain in ("_InactiveRpcError", "debug_error_string", "direct cause", "During handling"):
        assert chain not in text
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.grpc_error.grpc_status_code == grpc.StatusCode.NOT_FOUND and "nosuchapp" in err.details


def test_a_failed_call_in_a_cell_shows_a_short_traceback(shell, client):
    shell.user_ns["s"] = client.session("nosuchapp")
    with capture_output() as captured:
        result = shell.run_cell("s.send('Hello')")
    assert isinstance(result.error_in_exec, CesError)
    shown = captured.stdout + captured.stderr
    assert "CesError" in shown and "nosuchapp" in shown
    assert "_InactiveRpcError" not in shown and "NotFound" not in shown
    assert len(shown.splitlines()) < 40


def test_unreachable_endpoint_error_keeps_its_status_code():
    c = ces_nb.connect(APP, endpoint=f"127.0.0.1:{free_port()}")
    try:
        err = _failed_call(c)
    finally:
        c.close()
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.grpc_error is not None
    assert "_InactiveRpcError" not in "".join(traceback.format_exception(err))


# -- a transcript with one bad turn ---------------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not UTF-8 text"),
    (b"5", "holds a number"),
    (b'"hello"', "holds a string"),
    (b"null", "holds null"),
    (b'{"name": "my-package", "version": "1.0"}', 'no "turns"'),
    (b'{"format": "ces_nb.transcript", "version": 1, "turns": 5}', '"turns" is a number'),
    (b'{"format": "ces_nb.transcript", "version": "one", "turns": []}', "version"),
    (b"[1, 2, 3]", "none of its 3 items is a turn"),
    (DEEP.encode(), "nests too deep"),
])
def test_load_of_a_file_that_is_not_a_transcript_is_a_usage_error(ip, tmp_path, content, words):
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(words)) as err:
        ip.run_line_magic("cescmd", f"load {path}")
    assert "not a transcript" in str(err.value) and "%cescmd save" in str(err.value)


HOSTILE = "<script>alert(1)</script>"


def _recorded(client, tmp_path) -> dict:
    session = client.session()
    for text in ("Hello", "How many bags can I check?", "What is my loyalty tier?", "Can I bring my cat on the plane?"):
        session.send(text)
    return json.loads(session.save(tmp_path / "trip.json").read_text())


def test_a_transcript_with_bad_turns_renders_every_other_turn(client, tmp_path):
    data = _recorded(client, tmp_path)
    good = [t["outputs"][0]["text"] for t in data["turns"]]
    data["turns"][1]["outputs"] = 5
    data["turns"][2]["outputs"][0]["text"] = {HOSTILE: 1}
    data["turns"][3]["outputs"].insert(1, {"audio": "%%% not base64 %%%", "turn_index": 4})
    data["turns"].append(7)
    data["metadata"] = 5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))

    loaded = Transcript.load(path)
    assert loaded.load_errors == ["metadata: expected an object, got a number: 5"] and loaded.metadata == {}
    assert [t.index for t in loaded] == [1, 2, 3, 4, 5]
    assert loaded[0].text == good[0] and loaded[3].text == good[3]  # the good parts of a bad turn stay
    assert loaded[1].load_errors == ["turns[1].outputs: expected a list, got a number: 5"]
    assert loaded[2].load_errors[0].startswith("turns[2].outputs[0].text: expected a string, got an object")
    assert loaded[3].load_errors == ["turns[3].outputs[1].audio: not valid base64"]
    assert loaded[4].load_errors == ["turns[4]: expected a turn (an object), got a number: 7"]
    bundle = loaded._repr_mimebundle_()
    plain, html = bundle["text/plain"], bundle["text/html"]
    for text in (good[0], good[3]):
        assert text in plain
    assert "Hello traveler" in html and html.count('class="ces-turn"') == 5
    for field in ("metadata: expected an object", "turns[1].outputs", "turns[2].outputs[0].text", "turns[3].outputs[1].audio", "turns[4]"):
        assert field in plain and field in html
    assert "&lt;script" in html and HOSTILE not in html


def test_strict_load_names_the_turn_and_the_field(client, tmp_path):
    data = _recorded(client, tmp_path)
    data["turns"][3]["outputs"].insert(1, {"audio": "%%% not base64 %%%", "turn_index": 4})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TranscriptError, match=re.escape("turns[3].outputs[1].audio: not valid base64")) as err:
        Transcript.load(path, strict=True)
    assert err.value.path == "turns[3].outputs[1].audio" and str(path) in str(err.value)
    assert isinstance(err.value, ValueError)
    data["turns"][0]["root_span"]["child_spans"][0]["start_time"] = "yesterday"
    path.write_text(json.dumps(data))
    with pytest.raises(TranscriptError, match=re.escape("turns[0].root_span.child_spans[0].start_time: not a timestamp")):
        Transcript.load(path, strict=True)
    kept = Transcript.load(path)[0]
    assert kept.root_span is not None and kept.text  # only the bad span is left out


def test_load_magic_renders_the_good_turns_of_a_bad_transcript(ip, client, tmp_path):
    data = _recorded(client, tmp_path)
    data["turns"][1]["inputs"] = [{"text": {"x": HOSTILE}}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    loaded = ip.run_line_magic("cescmd", f"load {path}")
    assert len(loaded) == 4 and loaded[1].inputs == [] and loaded[1].text
    html = loaded._repr_mimebundle_()["text/html"]
    assert "turns[1].inputs[0].text: expected a string" in html and HOSTILE not in html


def test_a_turn_that_cannot_be_drawn_shows_an_error_card_and_the_others_draw(client):
    session = client.session()
    first = session.send("Hello")
    broken = Turn(index=2, outputs=[TextOutput({HOSTILE: 1}, 2)], completed=True)
    corrupt_wav = Turn(index=3, inputs=[UserInput("audio", b"RIFF\x00\x00\x00\x00WAVEgarbage")], completed=True)
    t = Transcript([first, broken, corrupt_wav])
    bundle = t._repr_mimebundle_()
    assert first.text in bundle["text/plain"] and "Turn 2" in bundle["text/plain"] and "Turn 3" in bundle["text/plain"]
    html = bundle["text/html"]
    assert "Hello traveler" in html and html.count('class="ces-turn"') == 3
    assert "Turn 2 could not be drawn" in html and HOSTILE not in html
    assert "Turn 2 could not be drawn" in bundle["text/plain"]
    assert "[audio " in bundle["text/plain"]  # the unreadable WAV says what it is


def test_a_bad_span_deep_in_a_tree_is_left_out_alone_and_named_briefly():
    raw: dict = {"name": "root", "duration": "1s"}
    node = raw
    for i in range(5000):
        child = {"name": f"s{i}", "duration": "0.001s"}
        node["child_spans"] = [child, {"name": f"sibling{i}"}] if i == 4000 else [child]
        node = child
    node["start_time"] = "yesterday"
    data = {"format": "ces_nb.transcript", "version": 1, "turns": [{"turn_index": 1, "outputs": [], "root_span": raw}]}
    (problem,) = Transcript.from_dict(data)[0].load_errors
    assert problem.startswith("turns[0].root_span.child_spans[0]") and "…4991 more…" in problem
    assert problem.endswith('.child_spans[0].start_time: not a timestamp, got a string: "yesterday"') and len(problem) < 300
    root = Transcript.from_dict(data)[0].root_span
    assert sum(1 for _ in root.walk()) == 5001  # the one bad span out, its sibling in


# -- live sessions ----------------------------------------------------------------------------------

def test_sending_on_a_live_stream_that_died_says_it_died_and_why():
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "0")
    client = ces_nb.connect(APP, endpoint=server.address)
    live = client.session().live()
    try:
        live.open()
        live.send_text("Hello")
        assert "traveler" in live.next_turn().text
        server.proc.kill()  # kill -9: no go_away, the socket just goes
        server.proc.wait()
        started = time.monotonic()
        with pytest.raises(CesError, match=r"the live stream to 127\.0\.0\.1:\d+ died: UNAVAILABLE") as err:
            live.send_text("What is my loyalty tier?")
            live.next_turn(timeout=20)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "session.live()" in str(err.value)
        # known dead: every later send says so at once, it never waits out a timeout
        with pytest.raises(CesError, match="died: UNAVAILABLE"):
            live.send_text("Anyone there?")
        with pytest.raises(CesError, match="died: UNAVAILABLE"):
            live.next_turn(timeout=20)
        assert time.monotonic() - started < 5
        assert not live.alive and live.error is not None
    finally:
        live.close(5)
        client.close()
        server.stop()


def test_say_on_a_dead_live_stream_is_a_usage_error_naming_the_cause(shell):
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "0")
    shell.extension_manager.load_extension("ces_nb")
    try:
        shell.run_line_magic("config", f"CesMagics.emulator_address = {server.address!r}")
        shell.run_line_magic("cescmd", "new --app skyway")
        shell.run_line_magic("cescmd", "live")
        assert shell.run_line_magic("cescmd", 'say "What is my loyalty tier?"').heard == "what is my loyalty tier"
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(UsageError, match="live stream .* died: UNAVAILABLE.*%cescmd live"):
            for _ in range(2):  # the death may be noticed at the send or at the answer
                shell.run_line_magic("cescmd", 'say "How many bags can I check?"')
    finally:
        shell.run_line_magic("cescmd", "live --close")
        shell.extension_manager.unload_extension("ces_nb")
        server.stop()


# -- turn numbers across reconnects -------------------------------------------------------------------

def _reconnect_scenario(db: str):
    """Two turns, the emulator restarts at the same address (go_away), two more turns."""
    port = free_port()
    server = EmulatorProcess("--db", db, "--audio-pace", "0", "--workers", "1", port=port)
    client = ces_nb.connect(APP, endpoint=server.address)
    session = client.session()
    live = session.live()
    try:
        live.open()
        for text in ("Hello", "How many bags can I check?"):
            live.send_text(text)
            live.next_turn()
        server.stop()  # SIGTERM: go_away to open streams, then exit
        server = EmulatorProcess("--db", db, "--audio-pace", "0", "--workers", "1", port=port)
        for text in ("What is my loyalty tier?", "Can I bring my cat on the plane?"):
            live.send_text(text)
            live.next_turn(timeout=30)
        assert live.reconnects == 1
        stored = client.conversation(session.id)
        return session, stored
    finally:
        live.close(5)
        client.close()
        server.stop()


def test_after_a_reconnect_turn_numbers_follow_the_server(tmp_path):
    session, stored = _reconnect_scenario(str(tmp_path / "s.db"))
    assert [t.index for t in session.turns] == [1, 2, 3, 4] == [t.index for t in stored.turns]
    assert [t.text for t in session.turns] == [t.text for t in stored.turns]
    assert not any(t.notes for t in session.turns)


def test_after_a_reconnect_to_a_server_without_the_session_no_two_turns_share_a_number():
    session, stored = _reconnect_scenario(":memory:")
    assert [t.index for t in session.turns] == [1, 2, 3, 4]
    assert "Blue member" in session.turns[2].text
    if len(stored.turns) == 2:  # the new server knows turns 1-2 only as history: it counts its own from 1
        assert "the server numbered this turn 1" in session.turns[2].notes[0]
        assert "the server numbered this turn 2" in session.turns[3].notes[0]
