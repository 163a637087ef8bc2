"""Find, or start, the embedded emulator at an address.

Readiness is asked of the server itself through gRPC health for the CES
SessionService: that tells a ready emulator from one still warming up, and
from another program that happens to listen on the same port.

`ensure_emulator` is idempotent per address and process; an emulator it starts
is stopped when the Python process (the kernel) exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
import time

from .errors import CesError

DEFAULT_ADDRESS = "127.0.0.1:50551"
ENV_ADDRESS = "CES_NB_EMULATOR"
# The service whose health says "a CES emulator, ready for turns".
HEALTH_SERVICE = "google.cloud.ces.v1.SessionService"

SERVING = "SERVING"          # a CES emulator, ready
STARTING = "STARTING"        # a CES emulator, still warming up
FOREIGN = "FOREIGN"          # something listens there, but it is not a CES emulator
DOWN = "DOWN"                # nothing listens there

_started: dict[str, subprocess.Popen] = {}
_lock = threading.Lock()


def default_address() -> str:
    return os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS


def is_listening(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def health(address: str, timeout: float = 1.0) -> str:
    """SERVING, STARTING, FOREIGN or DOWN: what listens at `address`, asked through gRPC health."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not is_listening(address, timeout):
        return DOWN
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=timeout)
        except grpc.RpcError:
            # No health service, no such service, or not gRPC at all.
            return FOREIGN
    return SERVING if reply.status == health_pb2.HealthCheckResponse.SERVING else STARTING


def wait_until_serving(address: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll health until the emulator at `address` serves; False on timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(address) == SERVING:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def foreign_message(address: str) -> str:
    port = address.rpartition(":")[2]
    return (f"something other than a CES emulator listens at {address}; stop it, or use another port: "
            f"ces_nb.connect(endpoint='127.0.0.1:PORT') after `ces-nb emulator --port PORT`, "
            f"or set ${ENV_ADDRESS} (port {port} is taken)")


def ensure_emulator(address: str | None = None, apps: list[str] | None = None, db: str | None = None, timeout: float = 60.0,
                    rest_port: int | None = None) -> str:
    """Return the address of a running emulator, starting one there if nothing listens (with the
    REST binding on `rest_port` too, when given)."""
    address = address or default_address()
    with _lock:
        proc = _started.get(address)
        if proc is not None and proc.poll() is None:
            return address
        state = health(address)
        if state == SERVING:
            return address
        if state == STARTING and wait_until_serving(address, timeout):
            return address
        if state == FOREIGN:
            raise CesError(foreign_message(address))
        host, _, port = address.rpartition(":")
        cmd = [sys.executable, "-m", "ces_nb", "emulator", "--host", host or "127.0.0.1", "--port", port]
        for app in apps or []:
            cmd += ["--app", str(app)]
        if db:
            cmd += ["--db", db]
        if rest_port is not None:
            cmd += ["--rest-port", str(rest_port)]
        # Its output goes to a file, never a pipe nobody reads: a chatty emulator can't block on it.
        log = tempfile.NamedTemporaryFile("w+", prefix="ces-nb-emulator-", suffix=".log", delete=False)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        if wait_until_serving(address, timeout, proc):
            _started[address] = proc
            atexit.register(_stop, proc, log.name)
            return address
        proc.kill()
        proc.wait()
        log.seek(0)
        lines = log.read().splitlines()[-20:]
        log.close()
        os.unlink(log.name)
        raise CesError(
            f"the emulator did not start at {address}:\n" + "\n".join(lines) +
            f"\nTry it by hand: ces-nb emulator --port {port}"
        )


_by_apps: dict[tuple, str] = {}


def start_emulator(*apps: str, db: str = ":memory:", port: int | None = None, timeout: float = 90.0) -> str:
    """Start an emulator serving `apps` (CES exports: folders or zips) on a free local port, and
    return its address: `ces_nb.connect(APP_NAME, endpoint=address)` talks to it. It stops when
    this Python process (the kernel) exits. An export that cannot load raises CesError with the
    emulator's message; `ces-nb emulator --check --app PATH` prints the full load report.
    Called again with the same apps (re-running a notebook), it returns the emulator it started
    for them while that still runs, rather than starting another."""
    key = (tuple(str(Path(a).expanduser().resolve()) for a in apps), db)
    with _lock:  # the same apps again (a notebook's Run All, re-run): the emulator this process started for them
        address = _by_apps.get(key)
        if port is None and address and _started.get(address) is not None and _started[address].poll() is None:
            return address
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    address = ensure_emulator(f"127.0.0.1:{port}", apps=[str(a) for a in apps], db=db, timeout=timeout)
    with _lock:
        _by_apps[key] = address
    return address


def _stop(proc: subprocess.Popen, log_path: str | None = None) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if log_path:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
