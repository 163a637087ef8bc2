"""Run pythonFunction tool code in sandboxed worker subprocesses.

Workers are kept warm (spawning Python per call costs tens of milliseconds). Each runs
`python -I python_worker.py` in its own session (so it and anything it forks form one
process group), with a scrubbed environment, a private 0700 working directory as HOME and
TMPDIR, no inherited file descriptors but its pipes and stderr, and the rlimits of
SandboxLimits; as root it drops to an unprivileged user first, and it dies with the
emulator (PR_SET_PDEATHSIG). A call that times out, is cancelled (a client's deadline or
cancel), crashes its worker, or returns too much kills the worker's process group; a
fresh worker serves the next call.

What this cannot stop, without namespaces or cgroups: tool code still sees the process
list and other processes' command lines in /proc, and reads whatever its user may read:
when the emulator is not root that user is the emulator's own, so its files and its
/proc/<pid>/environ too. Processes of the sandbox user (`nobody` is shared) may signal
each other. A child that tool code forks and moves to a new session with os.setsid()
outlives the process-group kill (it keeps the rlimits). A killed emulator's worker
directories stay until the next runner's first spawn sweeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

from .fair_share import elsewhere
from .sandbox import FLAGS, SandboxLimits

# (tool name, args, the caller's state) -> {"result": ..., "state_delta": ...} or {"error": ...}
ToolCallHandler = Callable[[str, dict, dict], Awaitable[dict]]

log = logging.getLogger("ces_nb.emulator")

DEFAULT_TIMEOUT_S = SandboxLimits.timeout_s
WORKER = str(Path(__file__).with_name("python_worker.py"))
START_TIMEOUT_S = 30.0  # a worker's start-up, on a loaded machine
OFF_LOOP_BYTES = 256 * 1024  # frames at least this big are parsed off the event loop
HOME_PREFIX = "ces-nb-tool-"
LOCK_NAME = ".ces-nb-lock"


class _ResultTooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


class _Home:
    """A worker's private directory (0700). Its emulator holds a lock in it while it lives,
    so that one a killed emulator left behind can be told apart and swept."""

    def __init__(self, ids: tuple[int, int] | None):
        self.path = tempfile.mkdtemp(prefix=HOME_PREFIX)
        # Locked under a temporary name, then renamed: a sweeper never sees it unlocked.
        tmp = os.path.join(self.path, LOCK_NAME + ".new")
        self._lock = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.rename(tmp, os.path.join(self.path, LOCK_NAME))
        if ids:
            try:
                os.chown(self.path, *ids)
            except OSError:
                self.remove()
                raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)


def _sweep_homes() -> None:
    """Removes the directories of workers whose emulator was killed (kill -9)."""
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if not entry.name.startswith(HOME_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(os.path.join(entry.path, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # not a worker's, or not ours to read
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its emulator lives
            finally:
                os.close(fd)
            shutil.rmtree(entry.path, ignore_errors=True)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, home: _Home):
        self.proc = proc
        self.home = home
        self._killed = False

    async def read_frame(self, max_bytes: int) -> dict:
        assert self.proc.stdout
        async with elsewhere():  # the worker runs the code in its own process
            header = await self.proc.stdout.readline()
        if not header:
            raise ConnectionError("the tool worker exited")
        size = int(header)
        if size > max_bytes:
            raise _ResultTooLarge(size)
        async with elsewhere():
            data = await self.proc.stdout.readexactly(size)
        # A large result (up to --tool-max-result-mb) would hold the event loop, and every other
        # session, while it parses: parse it in a thread.
        if size < OFF_LOOP_BYTES:
            return json.loads(data)
        async with elsewhere():
            return await asyncio.to_thread(json.loads, data)

    async def send(self, payload: bytes) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(b"%d\n" % len(payload) + payload)
        await self.proc.stdin.drain()

    async def call(self, payload: bytes, max_bytes: int, on_tool_call: "ToolCallHandler | None" = None) -> dict:
        """Sends a request and returns its reply, answering the worker's tool calls on the way."""
        await self.send(payload)
        while True:
            frame = await self.read_frame(max_bytes)
            request = frame.get("tool_call")
            if request is None:
                return frame
            if on_tool_call is None:
                answer = {"error": f"tools.{request.get('name')}() is not available here"}
            else:
                answer = await on_tool_call(str(request.get("name", "")), request.get("args") or {}, request.get("state") or {})
            await self.send(json.dumps(answer, default=str).encode())

    def kill(self) -> None:
        """SIGKILLs the worker's process group, once, and closes our ends of its pipes."""
        if self._killed:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # A child that left the group may still hold the pipes' other ends, and asyncio's
        # wait() returns only once all of them are closed.
        transport = self.proc._transport  # noqa: SLF001 - asyncio keeps the pipe transports only here
        for fd in (0, 1):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None and not pipe.is_closing():  # one the worker's exit closed is done
                pipe.abort() if fd == 0 else pipe.close()


class PythonToolRunner:
    """A small pool of warm workers, bound to the event loop that first uses it."""

    def __init__(self, max_workers: int = 2, limits: SandboxLimits | None = None):
        self._max = max_workers
        self.limits = limits or SandboxLimits()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._reaping: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._swept = False
        self._ids = _sandbox_ids(self.limits.user)
        self._config = {
            "parent": os.getpid(),
            "uid": self._ids[0] if self._ids else None,
            "gid": self._ids[1] if self._ids else None,
            "cpu_s": self.limits.cpu_s,
            "memory_bytes": self.limits.memory_mb << 20,
            "file_bytes": self.limits.max_file_mb << 20,
            "open_files": self.limits.max_open_files,
            # Per user, and not enforced on root: it binds under the sandbox user, is harmless
            # on root, and would count all of any other user's processes (see SandboxLimits).
            "procs": self.limits.max_procs if _is_root() else None,
        }
        self._max_result = int(self.limits.max_result_mb * 2**20)

    async def _spawn(self) -> _Worker:
        if not self._swept:
            self._swept = True
            _sweep_homes()
        try:
            home = _Home(self._ids)
        except OSError as exc:  # chown: e.g. a user namespace that maps no such ids
            self._keep_root(f"python tools run as root: cannot give uid {self._ids[0]} a directory: {exc}")
            home = _Home(None)
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": home.path, "TMPDIR": home.path}
        env.update({k: os.environ[k] for k in ("LANG", "LC_ALL") if k in os.environ})
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", WORKER, json.dumps({**self._config, "home": home.path}),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=home.path, env=env, close_fds=True, start_new_session=True, limit=1 << 20,
            )
        except BaseException:
            home.remove()
            raise
        worker = _Worker(proc, home)
        self._all.add(worker)
        try:
            ready = await asyncio.wait_for(worker.read_frame(4096), START_TIMEOUT_S)
        except BaseException:
            self._discard(worker)
            raise
        if "warning" in ready:
            self._keep_root(ready["warning"])
        return worker

    async def prewarm(self) -> None:
        """Start one idle worker now (it runs no tool code), so the first call doesn't wait for it."""
        if self._idle:
            return
        try:
            self._idle.append(await self._spawn())
        except (OSError, EOFError, ValueError) as exc:  # the first call will say so again
            log.warning("the python tool worker could not start: %r", exc)

    def _keep_root(self, why: str) -> None:
        """The sandbox user does not work here: say so once, and stop trying."""
        log.warning("%s (%s)", why, FLAGS["user"])
        self._ids = None
        self._config.update(uid=None, gid=None)

    def _take_idle(self) -> _Worker | None:
        while self._idle:
            worker = self._idle.pop()
            if worker.proc.returncode is None:
                return worker
            self._discard(worker)
        return None

    async def run(self, code: str, function: str, args: dict[str, Any], timeout: float | None = None) -> dict:
        """Returns the function's result as a dict, or {"error": "..."}. `timeout` is the
        tool's own (None: the default), capped at the limits' max_timeout_s."""
        reply = await self.call(code, function, args, timeout)
        if "error" in reply:
            return {"error": reply["error"]}
        result = reply.get("result")
        return result if isinstance(result, dict) else {"result": result}

    async def call(
        self, code: str, function: str, args: dict[str, Any], timeout: float | None = None, *,
        filename: str | None = None, context: dict | None = None, callback: str | None = None,
        on_tool_call: ToolCallHandler | None = None, nested: bool = False,
    ) -> dict:
        """The worker's whole reply: {"result", "state_delta"} or {"error", "traceback"}.

        filename: the code's path in the export (tracebacks name it). context: the session
        as CES shows it to code (state, agent_name, ...). callback: a CES callback kind.
        on_tool_call answers the code's `tools.<name>()` calls within the same deadline.
        nested: a call made by such a `tools.<name>()`: it takes no pool slot (its caller
        holds one and waits for it), so a chain of calls can never deadlock the pool."""
        seconds = self.limits.timeout_for(timeout)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        request: dict[str, Any] = {"code": code, "function": function, "args": args}
        if filename:
            request["filename"] = filename
        if context is not None:
            request["context"] = context
        if callback:
            request["callback"] = callback
        payload = json.dumps(request, default=str).encode()
        async with (contextlib.nullcontext() if nested else self._slots):
            worker = self._take_idle()
            if worker is None:
                try:
                    worker = await self._spawn()
                except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
                    log.error("the python tool worker could not start: %r", exc)
                    return {"error": f"the tool worker could not start ({exc!r}); see the emulator's log"}
            keep = False
            try:
                reply = await asyncio.wait_for(worker.call(payload, self._max_result, on_tool_call), seconds)
                keep = not reply.pop("retire", False)
            except TimeoutError:
                return {"error": self._timed_out(function, timeout, seconds)}
            except _ResultTooLarge as exc:
                return {"error": f"the tool's result is {exc.size / 2**20:.1f} MiB; the limit is "
                                 f"{self.limits.max_result_mb:g} MiB ({FLAGS['max_result_mb']})"}
            except (ConnectionError, EOFError, ValueError) as exc:
                return {"error": f"{function} crashed the tool worker ({await _how_it_ended(worker, exc)})"}
            finally:
                # Whatever else happened (a cancel included), a worker not known good is killed.
                if keep:
                    self._idle.append(worker)
                else:
                    self._discard(worker)
        if "error" in reply:
            limit = self.limits.describe(reply.pop("limit", None))
            if limit:
                reply["error"] += f"; {limit}"
        return reply

    def _timed_out(self, function: str, requested: float | None, seconds: float) -> str:
        message = f"{function} timed out after {seconds:g} s"
        if requested and requested > seconds:
            message += f" (its timeout of {requested:g} s is capped at {seconds:g} s: {FLAGS['max_timeout_s']})"
        return message

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)
        task = asyncio.get_running_loop().create_task(self._reap(worker))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap(self, worker: _Worker) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.proc.wait(), 5)
        worker.proc._transport.close()  # noqa: SLF001 - after wait(): frees it without a warning
        await asyncio.get_running_loop().run_in_executor(None, worker.home.remove)

    async def close(self) -> None:
        for worker in list(self._all):
            self._discard(worker)
        self._idle.clear()
        if self._reaping:
            await asyncio.wait(set(self._reaping), timeout=10)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _sandbox_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) the workers drop to: only when the emulator runs as root."""
    if user is None or not _is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("no user %r to run python tools as: they run as root (%s)", user, FLAGS["user"])
        return None
    return (entry.pw_uid, entry.pw_gid) if entry.pw_uid != 0 else None


async def _how_it_ended(worker: _Worker, exc: BaseException) -> str:
    if isinstance(exc, (ConnectionError, EOFError)):  # it exited: say how
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.proc.wait(), 1)
    code = worker.proc.returncode
    if code is None:
        return str(exc)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
