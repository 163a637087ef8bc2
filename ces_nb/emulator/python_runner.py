"""Run pythonFunction tool code in worker subprocesses, with a timeout.

Workers are kept warm (spawning Python per call costs tens of milliseconds)
and killed and replaced when a call times out, so a runaway tool never blocks
the emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any

DEFAULT_TIMEOUT_S = 10.0


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def call(self, request: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise ConnectionError("the tool worker exited")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class PythonToolRunner:
    """A small pool of warm workers, bound to the event loop that first uses it."""

    def __init__(self, max_workers: int = 2):
        self._max = max_workers
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._ids = itertools.count(1)

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ces_nb.emulator.python_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        return worker

    async def run(self, code: str, function: str, args: dict[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> dict:
        """Returns the function's result as a dict, or {"error": "..."}."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._spawn()
            request = {"id": next(self._ids), "code": code, "function": function, "args": args}
            try:
                reply = await asyncio.wait_for(worker.call(request), timeout)
            except asyncio.TimeoutError:
                self._discard(worker)
                return {"error": f"{function} timed out after {timeout:g} s"}
            except (ConnectionError, BrokenPipeError, json.JSONDecodeError) as exc:
                self._discard(worker)
                return {"error": f"{function} crashed the tool worker: {exc}"}
            self._idle.append(worker)
        if "error" in reply:
            return {"error": reply["error"]}
        result = reply.get("result")
        return result if isinstance(result, dict) else {"result": result}

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)

    async def close(self) -> None:
        for worker in list(self._all):
            worker.kill()
            try:
                await asyncio.wait_for(worker.proc.wait(), 2)
            except asyncio.TimeoutError:
                pass
        self._all.clear()
        self._idle.clear()
