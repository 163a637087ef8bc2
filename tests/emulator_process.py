"""An emulator in a subprocess, as users run it (`ces-nb emulator`).

Readiness comes from gRPC health, never from its output. The output goes to a
file, never to a pipe nobody reads, so a chatty emulator can never block on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from ces_nb.local_emulator import wait_until_serving


class EmulatorProcess:
    def __init__(self, *args: str, port: int | None = None, timeout: float = 90):
        if "--port" in args:
            raise ValueError("pass the port as EmulatorProcess(..., port=N): readiness is checked on it")
        self.args = args
        for _attempt in range(3):  # a free port can be taken between picking and binding it
            self.port = port or free_port()
            self.address = f"127.0.0.1:{self.port}"
            self.log = tempfile.NamedTemporaryFile("w+", prefix="emulator-", suffix=".log", delete=False)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ces_nb", "emulator", "--port", str(self.port), *args],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            )
            if wait_until_serving(self.address, timeout, self.proc):
                return
            self.proc.kill()
            self.proc.wait()
            if port is not None or "is taken" not in self.output():
                break
        raise RuntimeError(f"emulator did not start at {self.address}: {self.output()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the emulator printed so far (stdout and stderr)."""
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return code


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
