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
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import ces_nb
from ces_nb import CesError

from conftest import APP
from emulator_process import EmulatorProcess, free_port

DEEP = "[" * 10_000 + "]" * 10_000


@pytest.fixture(scope="module")
def shell():
    config = Config()
    config.HistoryAccessor.enabled = False
    return InteractiveShell.instance(config=config)


@pytest.fixture
def ip(shell, emulator):
    shell.extension_manager.load_extension("ces_nb")
    shell.run_line_magic("config", f"CesMagics.emulator_address = {emulator.address!r}")
    shell.run_line_magic("config", "CesMagics.app = 'skyway'")
    shell.run_line_magic("config", "CesMagics.stream = False")
    yield shell
    shell.extension_manager.unload_extension("ces_nb")


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
        ip.run_line_magic("ces", f"save {missing / 'trip.json'}")
    assert "%ces save trip.json" in str(err.value)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path} is a folder")) as err:
        ip.run_line_magic("ces", f"save {tmp_path}")
    assert f"%ces save {tmp_path / 'trip.json'}" in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no folder {missing}: create it first")):
        ces_nb.Transcript().save(missing / "trip.json")  # the Python API says it too
    assert not missing.exists()


def test_audio_flag_with_a_file_that_is_not_audio_is_a_usage_error(ip, tmp_path, client):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a sound\n" * 20)
    with pytest.raises(UsageError, match=re.escape(f"{notes} is not audio")) as err:
        ip.run_line_magic("ces", f"--audio {notes}")
    assert "WAV" in str(err.value) and '%ces say "' in str(err.value)
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
    with pytest.raises(UsageError, match=re.escape(words)) as err:
        ip.run_line_magic("ces", line)
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
