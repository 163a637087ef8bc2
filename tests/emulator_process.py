"""An emulator in a subprocess, as users run it (`ces-nb emulator`).

Readiness comes from gRPC health, never from its output. The output goes to a
file, never to a pipe nobody reads, so a chatty emulator can never block on it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from ces_nb.local_emulator import wait_until_serving


class EmulatorProcess:
    def __init__(self, *args: str, port: int | None = None, rest_port: int | None = None, timeout: float = 90,
                 env: dict[str, str] | None = None):
        """rest_port: also serve REST there (`--rest-port`; 0 picks a free one), at `.rest_url`.
        env: more environment for the emulator (a failpoint, say)."""
        if "--port" in args or "--rest-port" in args:
            raise ValueError("pass the ports as EmulatorProcess(..., port=N, rest_port=M): readiness is checked on them")
        self.args = args
        for _attempt in range(3):  # a free port can be taken between picking and binding it
            self.port = port or free_port()
            self.address = f"127.0.0.1:{self.port}"
            self.rest_port = None if rest_port is None else rest_port or free_port()
            self.rest_url = None if self.rest_port is None else f"http://127.0.0.1:{self.rest_port}"
            rest = [] if self.rest_port is None else ["--rest-port", str(self.rest_port)]
            self.log = tempfile.NamedTemporaryFile("w+", prefix="emulator-", suffix=".log", delete=False)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ces_nb", "emulator", "--port", str(self.port), *rest, *args],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                env={**os.environ, **(env or {})},
            )
            deadline = time.monotonic() + timeout
            if wait_until_serving(self.address, timeout, self.proc) and self._rest_answers(deadline):
                return
            self.proc.kill()
            self.proc.wait()
            out = self.output()
            picked = (port is None and f"emulator: port {self.port} " in out) or (rest_port == 0 and "emulator: REST port" in out)
            if "is taken" not in out or not picked:
                break
        raise RuntimeError(f"emulator did not start at {self.address}: {self.output()[-3000:]}")

    def _rest_answers(self, deadline: float) -> bool:
        """With REST: poll until its port answers HTTP (any status will do)."""
        while self.rest_url is not None and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(self.rest_url + "/", timeout=2).close()
                return True
            except urllib.error.HTTPError:  # the JSON 404 for "/": it serves
                return True
            except OSError:
                time.sleep(0.05)
        return self.rest_url is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the emulator printed so far (stdout and stderr)."""
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """kill -9, as a crash would: with `--workers`, the worker processes first, then their
        supervisor (killed alone, it takes them down too, but a moment later: a turn could
        still complete in between)."""
        for worker in self.workers():
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()

    def workers(self) -> list[int]:
        """The pids of the emulator's worker processes (`--workers N`); [] for one process."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            return []
        workers = []
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"--worker-ready-fd" in f.read():
                        workers.append(child)
            except OSError:
                pass
        return workers

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
