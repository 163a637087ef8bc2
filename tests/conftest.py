"""Every test talks to a real emulator process over a real socket, through the
official google-cloud-ces clients on an insecure channel."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

from emulator_process import EmulatorProcess  # noqa: F401  (tests import it from here)

APP = "projects/test-project/locations/us/apps/skyway"


def pytest_configure(config):
    # The default store (~/.local/share/ces_nb/emulator.db) and TLS files live under
    # $XDG_DATA_HOME: each test process gets its own, so an emulator a test starts with the
    # defaults never touches the user's store, nor shares one with another xdist worker's.
    data = tempfile.mkdtemp(prefix="ces-nb-test-data-")
    os.environ["XDG_DATA_HOME"] = data
    config.add_cleanup(lambda: shutil.rmtree(data, ignore_errors=True))


_TIMEOUT = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    # The timeout pytest-timeout resolved for this test (marker, ini, --timeout or env); returning
    # None leaves the timer itself to pytest-timeout.
    item.stash[_TIMEOUT] = settings.timeout


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Each test's own timeout travels with its report (user_properties cross from an xdist
    # worker to the controller), for the summary of the slowest below.
    outcome = yield
    if call.when == "call":
        outcome.get_result().user_properties.append(("timeout", item.stash.get(_TIMEOUT, 0.0)))


_SLOWEST = 10


def pytest_terminal_summary(terminalreporter):
    """The slowest tests, each against its own timeout: every test should take at most half of it."""
    reports = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
               if r.when == "call"]
    if not reports:
        return
    terminalreporter.section(f"{_SLOWEST} slowest tests, against their own timeouts")
    for report in sorted(reports, key=lambda r: r.duration, reverse=True)[:_SLOWEST]:
        timeout = dict(report.user_properties).get("timeout") or 0
        share = f"{report.duration / timeout:4.0%} of {timeout:.0f} s" if timeout else "no timeout"
        over = "  << over half its timeout" if timeout and report.duration > timeout / 2 else ""
        terminalreporter.write_line(f"{report.duration:7.1f} s  {share:>14}  {report.nodeid}{over}")


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
