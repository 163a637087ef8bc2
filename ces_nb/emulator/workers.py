"""`ces-nb emulator --workers N`: one emulator served by N processes.

A turn runs on one core (one event loop, and Python's GIL), so one process serves about as many
turns a second with 100 sessions as with one. Here a supervisor starts N worker processes, each a
whole emulator (`ces-nb emulator --workers 1`, plus the hidden `--worker-ready-fd`), all
listening on the same gRPC (and REST) port with SO_REUSEPORT: the kernel spreads connections
over them. A client connection's sessions and bidi streams stay on one worker (gRPC channels in
one process to one address share a connection, unless each has grpc.use_local_subchannel_pool);
another connection, or a reconnect, may reach another worker, and the workers share the
store: a worker uses its cached copy of a session only while the store's revision of it is its
own, and a turn that loses a race with a sibling is retried on the stored session
(runtime.AppRuntime). So `:memory:`, which lives in one process, takes one worker.

The supervisor holds what one emulator holds, for all of them:
* the store: the SQLite file's lock (store.StoreLock), passed down to the workers so it is
  free only once every one of them is gone (the workers create its tables one at a time:
  store.open_store);
* the port: a lock on it (a second `--workers` emulator would join the same SO_REUSEPORT group
  and take half of the traffic), and a placeholder socket bound with SO_REUSEPORT, which keeps
  a single-process emulator or another program off the port, and picks it for `--port 0`.

Each worker has a core of its own when there are as many workers as cores the supervisor may use
(the default `--workers`; `--pin-workers off` leaves the placement to the kernel): left to the
scheduler, a worker woken by a request was often placed on the core where a sibling was busy with
a back-to-back client, and its turn took twice as long while the other core sat idle
(benchmarks/isolation.py: a neighbour on the other worker 2.07x -> 1.63x of quiet while another
client sends its worst inputs; load.py's 2 workers / 1, 1.60x -> 1.66x). A worker's threads and
its tool workers (python_runner.py) share its core, so a client's tool code slows that worker's
sessions, not every worker's (run on any core, they took the neighbour on the other worker from
1.35x to 1.44x of quiet, and on the same worker from 1.59x to 1.71-1.79x). Everything else on the
machine runs anywhere. With fewer workers than cores nothing is pinned: several emulators would
otherwise all stack on the first cores.

Workers die with the supervisor (PR_SET_PDEATHSIG, as the tool workers die with theirs), and
the supervisor stops them all, with go_away, on SIGTERM or Ctrl-C. If a worker dies, the
supervisor stops the others and exits non-zero: better a clear exit than an emulator serving
from fewer workers than asked. Health (`ces-nb health`) answers from whichever worker the
connection reaches: each says SERVING once the supervisor has heard from every worker that it
is warmed up, and the supervisor then prints "listening".
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .store import StoreError, check_store, is_server_database, open_sqlite_file, sqlite_file

PR_SET_PDEATHSIG = 1
# How long every worker may take to start (imports, store check, warm-up), and to stop.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


class PortLock:
    """An exclusive lock on `port` for this user, and a placeholder socket holding it."""

    def __init__(self, host: str, port: int, what: str, flag: str):
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.socket.bind(address)
        except OSError:
            self.socket.close()
            raise OSError(f"{what} {port} on {host} is taken (another emulator, or another program, listens there); "
                          f"stop it, or pick another: {flag} {port + 1} (or {flag} 0 for any free one)") from None
        self.port = self.socket.getsockname()[1]
        folder = os.path.join(tempfile.gettempdir(), f"ces-nb-{os.getuid()}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(folder, f"port-{self.port}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").strip() or "another process"
            self.release()
            raise OSError(f"{what} {self.port} on {host} is taken by another emulator ({holder}); stop it, or pick "
                          f"another: {flag} {self.port + 1} (or {flag} 0 for any free one)") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()}".encode())

    def release(self) -> None:
        self.socket.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _die_with_parent() -> None:
    """In each worker, before exec: SIGKILL when the supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def worker_cores(workers: int, pin: bool) -> list[int | None]:
    """The core each worker runs on: one of its own, when there are as many workers as cores this
    process may use; else None (anywhere)."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or workers != len(cores):
        return [None] * workers
    return cores


def _start_worker(core: int | None):
    """In each worker, before exec: it dies with the supervisor, on its own core if it has one."""
    def start() -> None:
        _die_with_parent()
        if core is not None:
            os.sched_setaffinity(0, {core})
    return start


def run_supervisor(argv: list[str], workers: int, host: str, port: int, rest_port: int | None, db: str,
                   describe_db, check_inputs=lambda: 0, pin: bool = True) -> int:
    """Serve `ces-nb emulator ARGV` from `workers` processes until SIGTERM / SIGINT; the exit code.
    `check_inputs()` checks the apps and options (0, or the exit code, having said why); it runs
    while the workers start, which each take as long to load them, and a mistake stops them."""
    path = sqlite_file(db)
    held: list = []
    try:
        store_lock = open_sqlite_file(path) if path else None
        if store_lock is not None:
            held.append(store_lock)
        grpc_port = PortLock(host, port, "port", "--port")
        held.append(grpc_port)
        rest = PortLock(host, rest_port, "REST port", "--rest-port") if rest_port is not None else None
        if rest is not None:
            held.append(rest)
        if is_server_database(db):  # checked here once, rather than by each worker at once
            check_store(db)
    except (OSError, StoreError) as exc:
        print(f"ces-nb emulator: {exc}", file=sys.stderr)
        for item in reversed(held):
            item.release()
        return 1

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    # a signal also writes to this pipe, so waits below end at once instead of at their timeout
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    inherited = [lock.fd for lock in held if getattr(lock, "fd", None) is not None]
    if store_lock is not None:
        inherited.append(store_lock._fd)
    procs: list[subprocess.Popen] = []
    ready_pipes: list[int] = []
    go_pipes: list[int] = []
    code = 0
    cores = worker_cores(workers, pin)
    try:
        for n, core in enumerate(cores):
            read_fd, write_fd = os.pipe()  # the worker says "ready" (warmed up, not yet SERVING)
            go_read, go_write = os.pipe()  # the supervisor says go: every worker is ready
            cmd = [sys.executable, "-m", "ces_nb", "emulator", *argv, "--workers", "1", "--port", str(grpc_port.port),
                   *(["--rest-port", str(rest.port)] if rest is not None else []), "--db", db,
                   "--worker-ready-fd", str(write_fd), "--worker-go-fd", str(go_read)]
            procs.append(subprocess.Popen(cmd, pass_fds=[write_fd, go_read, *inherited], preexec_fn=_start_worker(core),
                                          stdin=subprocess.DEVNULL, env={**os.environ, "CES_NB_WORKER": str(n + 1)}))
            os.close(write_fd)
            os.close(go_read)
            ready_pipes.append(read_fd)
            go_pipes.append(go_write)
        code = check_inputs()
        if code:
            _stop_all(procs, at_once=True)
            return code
        if not _wait_ready(procs, ready_pipes, stop):
            if stop:
                return 0
            failed = [p.returncode for p in procs if p.poll() is not None and p.returncode]
            print(f"ces-nb emulator: a worker did not start (exit {failed[0] if failed else 'none'}; its message, if any, is above); stopping", file=sys.stderr)
            return failed[0] if failed else 1  # 2 for an app or an option it cannot use, as one process says
        for fd in go_pipes:
            os.write(fd, b"g")
        address = f"{host}:{grpc_port.port}"
        placed = f"on cores {', '.join(map(str, cores))}" if cores[0] is not None else "on any core"
        print(f"CES emulator listening on {address} ({workers} workers {placed}; db: {describe_db(db)})", flush=True)
        if rest is not None:
            print(f"CES emulator REST on http://{host}:{rest.port} (the HTTP/JSON binding)", flush=True)
        while not stop:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                print(f"ces-nb emulator: worker pid {dead[0].pid} exited ({dead[0].returncode}); stopping the others",
                      file=sys.stderr, flush=True)
                code = 1
                break
            select.select([wake_read], [], [], 0.2)
        if stop:
            print("CES emulator: shutting down (go_away sent to open streams)", flush=True)
        return code
    finally:
        _stop_all(procs)
        signal.set_wakeup_fd(-1)
        for fd in ready_pipes + go_pipes + [wake_read, wake_write]:
            os.close(fd)
        for item in reversed(held):
            item.release()


def _wait_ready(procs, pipes, stop) -> bool:
    """True once every worker wrote to its ready pipe; False when one exits first, or on stop."""
    waiting = dict(zip(pipes, procs))
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting and not stop and time.monotonic() < deadline:
        readable, _, _ = select.select(list(waiting), [], [], 0.2)
        for fd in readable:
            if os.read(fd, 16):
                waiting.pop(fd)
            else:  # closed without a word: the worker exited
                return False
        if any(p.poll() is not None for p in waiting.values()):
            return False
    return not waiting


def _stop_all(procs: list[subprocess.Popen], at_once: bool = False) -> None:
    """SIGTERM, and SIGKILL for any still running after STOP_TIMEOUT_S; `at_once`: SIGKILL (workers
    still starting, with nothing to close)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if at_once else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
