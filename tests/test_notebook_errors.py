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
