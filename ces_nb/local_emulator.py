"""Start the embedded emulator as a subprocess when nothing listens at its address.

Idempotent per address and process; the subprocess is stopped when the Python
process (the kernel) exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time

DEFAULT_ADDRESS = "127.0.0.1:50551"
ENV_ADDRESS = "CES_NB_EMULATOR"

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


def ensure_emulator(address: str | None = None, apps: list[str] | None = None, db: str | None = None, timeout: float = 60.0) -> str:
    """Return the address of a running emulator, starting one there if needed."""
    address = address or default_address()
    with _lock:
        proc = _started.get(address)
        if proc is not None and proc.poll() is None:
            return address
        if is_listening(address):
            return address
        host, _, port = address.rpartition(":")
        cmd = [sys.executable, "-m", "ces_nb", "emulator", "--host", host or "127.0.0.1", "--port", port]
        for app in apps or []:
            cmd += ["--app", str(app)]
        if db:
            cmd += ["--db", db]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                _started[address] = proc
                atexit.register(_stop, proc)
                # Keep draining its output so the pipe never fills and blocks it.
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return address
        proc.kill()
        raise RuntimeError(
            f"the emulator did not start at {address}:\n{''.join(lines[-20:])}\n"
            "Try it by hand: ces-nb emulator --port " + port
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
