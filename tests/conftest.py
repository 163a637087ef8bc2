"""Every test talks to a real emulator process over a real socket, through the
official google-cloud-ces clients on an insecure channel."""

from __future__ import annotations

import itertools
import os

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

from emulator_process import EmulatorProcess  # noqa: F401  (tests import it from here)

APP = "projects/test-project/locations/us/apps/skyway"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    db = tmp_path_factory.mktemp("emulator") / "sessions.db"
    process = EmulatorProcess("--db", str(db))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def channel(emulator):
    ch = grpc.insecure_channel(emulator.address)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def sessions(channel):
    return ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))


@pytest.fixture(scope="session")
def agents(channel):
    return ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))


@pytest.fixture(scope="session")
def tools(channel):
    return ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel))


@pytest.fixture(scope="module")
def shell():
    """An IPython shell for magics tests, without a history database."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryAccessor.enabled = False
    return InteractiveShell.instance(config=config)


@pytest.fixture
def ip(shell, emulator):
    """The shell with ces_nb loaded and pointed at the test emulator's skyway app."""
    shell.extension_manager.load_extension("ces_nb")
    shell.run_line_magic("config", f"CesMagics.emulator_address = {emulator.address!r}")
    shell.run_line_magic("config", "CesMagics.app = 'skyway'")
    shell.run_line_magic("config", "CesMagics.stream = False")
    yield shell
    shell.extension_manager.unload_extension("ces_nb")


_counter = itertools.count(1)


@pytest.fixture
def session_name(request):
    """A fresh session name per test (and per call)."""
    prefix = request.node.name.replace("[", "-").replace("]", "")[:60]

    def make() -> str:
        return f"{APP}/sessions/{prefix}-{os.getpid()}-{next(_counter)}"

    return make


def run(sessions, name: str, *inputs, **config) -> list[ces_v1.SessionOutput]:
    request = ces_v1.RunSessionRequest(
        config=ces_v1.SessionConfig(session=name, **config),
        inputs=[i if isinstance(i, ces_v1.SessionInput) else ces_v1.SessionInput(text=i) for i in inputs],
    )
    return list(sessions.run_session(request=request).outputs)


def kind(output: ces_v1.SessionOutput) -> str | None:
    return ces_v1.SessionOutput.pb(output).WhichOneof("output_type")


def texts(outputs) -> str:
    return " ".join(o.text for o in outputs if kind(o) == "text")
