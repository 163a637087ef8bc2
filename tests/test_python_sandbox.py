"""The sandbox around pythonFunction tool code: deadlines, cancels and crashes kill the
worker, resource limits, a scrubbed environment, and result size limits. Every test runs
real worker processes, either through a PythonToolRunner in this process (for small
limits) or through a real emulator process serving a test app whose `snippet` tool runs
any code it is given."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport
from google.protobuf import json_format

from conftest import EmulatorProcess
from ces_nb.emulator.agent_tools import PythonFunctionTool
from ces_nb.emulator.python_runner import PythonToolRunner
from ces_nb.emulator.sandbox import SandboxLimits

SECRET = "CES_NB_TEST_SECRET"
APP = "projects/p/locations/us/apps/sandbox"
SANDBOX_APP = {
    "app.yaml": """
        name: sandbox
        displayName: Sandbox
        rootAgent: Plain Agent
    """,
    "agents/plain_agent/plain_agent.yaml": """
        displayName: Plain Agent
        instruction: Runs snippets.
        tools: [snippet]
    """,
    "tools/snippet/snippet.yaml": """
        displayName: snippet
        timeout: 30s
        pythonFunction:
          name: snippet
          pythonCode: |
            def snippet(code: str) -> dict:
                \"\"\"Runs code; answers with the dict it leaves in `result`.\"\"\"
                scope = {}
                exec(code, scope)
                return scope.get("result", {})
    """,
}
SPIN = "def spin():\n    while True:\n        pass\n"
AS_ROOT = os.geteuid() == 0


def run_tool(code: str, limits: SandboxLimits | None = None, timeout: float | None = 10, **args) -> dict:
    """Runs the first function in `code` once, in a fresh runner's real worker."""
    async def main():
        runner = PythonToolRunner(limits=limits)
        try:
            return await runner.run(code, code.split("def ", 1)[1].split("(", 1)[0], args, timeout)
        finally:
            await runner.close()

    return asyncio.run(main())


# --- processes, seen through /proc --------------------------------------------------------

def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has stopped running


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) and st[1] == pid and alive(int(entry)):
            found.append(int(entry))
    return found


def workers_of(pid: int) -> list[int]:
    def is_worker(child: int) -> bool:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                return b"python_worker" in f.read()
        except OSError:
            return False

    return [c for c in children(pid) if is_worker(c)]


def gone_within(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def wait_for_file(path: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and (text := open(path).read()):
            return text
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def pid_file() -> str:
    # In /tmp, which the worker can write whatever user it runs as.
    return f"/tmp/ces-nb-test-{uuid.uuid4().hex}"


# --- the emulator, serving the sandbox test app -------------------------------------------

@pytest.fixture(scope="module")
def sandbox_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps") / "sandbox"
    for rel, body in SANDBOX_APP.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    return str(root)


@pytest.fixture(scope="module")
def emu(sandbox_app):
    os.environ[SECRET] = "hunter2"  # the emulator inherits it; tool code must not see it
    try:
        process = EmulatorProcess("--app", sandbox_app, "--db", ":memory:")
    finally:
        del os.environ[SECRET]
    yield process
    process.stop()


def tool_client(address: str) -> tuple[ces_v1.ToolServiceClient, grpc.Channel]:
    channel = grpc.insecure_channel(address)
    return ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel)), channel


@pytest.fixture(scope="module")
def tools(emu):
    client, channel = tool_client(emu.address)
    yield client
    channel.close()


def snippet(client, code: str, timeout: float | None = 30) -> dict:
    response = client.execute_tool(request={"parent": APP, "tool": "snippet", "args": {"code": code}}, timeout=timeout)
    return json_format.MessageToDict(ces_v1.ExecuteToolResponse.pb(response).response)


# --- deadlines and cancels ------------------------------------------------------------------

def test_cancelling_a_call_kills_its_worker_and_re_raises():
    async def main():
        runner = PythonToolRunner()
        before = set(workers_of(os.getpid()))
        task = asyncio.create_task(runner.run(SPIN, "spin", {}, 30))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if new := set(workers_of(os.getpid())) - before:
                break
        assert new, "no worker started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(gone_within, new, 3), "the cancelled call's worker still runs"
        assert (await runner.run("def f():\n    return {'ok': 1}\n", "f", {}, 5)) == {"ok": 1}
        await runner.close()

    asyncio.run(main())


def test_a_client_deadline_kills_the_worker(tools):
    path = pid_file()
    code = f"import os\nopen({path!r}, 'w').write(str(os.getpid()))\nwhile True: pass"
    try:
        with pytest.raises(exceptions.DeadlineExceeded):
            snippet(tools, code, timeout=1)
        pid = int(wait_for_file(path))
        assert gone_within([pid], 3), "the worker spins on after the client's deadline"
    finally:
        os.unlink(path)
    assert snippet(tools, "result = {'ok': 1}") == {"ok": 1}


def test_workers_die_with_the_emulator(sandbox_app, tools):
    server = EmulatorProcess("--app", sandbox_app, "--db", ":memory:")
    client, channel = tool_client(server.address)
    path = pid_file()
    try:
        # One worker busy in a call when the emulator dies, another idle.
        busy = threading.Thread(target=lambda: _ignore_errors(snippet, client,
                                f"import os, time\nopen({path!r}, 'w').write(f'{{os.getpid()}} {{os.getcwd()}}')\ntime.sleep(60)"))
        busy.start()
        sleeper, sleeper_dir = wait_for_file(path).split(" ", 1)
        sleeper = int(sleeper)
        body = snippet(client, "import os\nresult = {'pid': os.getpid(), 'dir': os.getcwd()}")
        idle = int(body["pid"])
        assert idle != sleeper
        dirs = [sleeper_dir, body["dir"]]
        assert {idle, sleeper} <= set(workers_of(server.proc.pid))
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        assert gone_within([idle, sleeper], 5), "workers outlived the emulator"
        busy.join(10)
        # A killed emulator cannot remove its workers' directories: the next runner to start
        # a worker does (any runner on the machine may, so they may be gone already), and it
        # leaves alone those of a live one.
        assert run_tool("import os\ndef f():\n    return {'dir': os.getcwd()}\n")["dir"] not in dirs
        assert not any(os.path.exists(d) for d in dirs)
        live = snippet(tools, "import os\nresult = {'dir': os.getcwd()}")["dir"]
        run_tool("def f():\n    return {}\n")
        assert os.path.isdir(live)
    finally:
        channel.close()
        server.stop()
        if os.path.exists(path):
            os.unlink(path)


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass


# --- resource limits ------------------------------------------------------------------------

def test_a_10_gb_allocation_is_capped_and_the_emulator_keeps_serving(tools):
    body = snippet(tools, "data = bytearray(10 * 2**30)\nresult = {'n': len(data)}")
    assert body["error"].startswith("MemoryError"), body
    assert "memory limit is 1024 MiB" in body["error"] and "--tool-memory-mb" in body["error"]
    assert snippet(tools, "result = {'ok': 1}") == {"ok": 1}


def test_a_timeout_kills_the_workers_whole_process_group():
    async def main():
        runner = PythonToolRunner(limits=SandboxLimits(max_timeout_s=1))
        # The tool forks a child that sleeps, then spins itself.
        code = "import os, time\ndef f():\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n    while True:\n        pass\n"
        task = asyncio.create_task(runner.run(code, "f", {}, 30))
        family: list[int] = []
        for _ in range(200):
            await asyncio.sleep(0.02)
            workers = workers_of(os.getpid())
            family = workers + [c for w in workers for c in children(w)]
            if len(family) >= 2:
                break
        assert len(family) >= 2, "the tool's child never appeared"
        assert (await task)["error"] == "f timed out after 1 s (its timeout of 30 s is capped at 1 s: --tool-max-timeout)"
        assert await asyncio.to_thread(gone_within, family, 3), "the worker or its child outlived the timeout"
        await runner.close()

    asyncio.run(main())


def test_an_exports_timeout_is_clamped_to_the_emulators_maximum():
    tool = ces_v1.Tool(display_name="spin", timeout={"seconds": 3600},
                       python_function=ces_v1.PythonFunction(name="spin", python_code=SPIN))

    async def main():
        runner = PythonToolRunner(limits=SandboxLimits(max_timeout_s=1))
        try:
            return await PythonFunctionTool(tool, "spin", "", runner).execute({}, None)
        finally:
            await runner.close()

    started = time.monotonic()
    body = asyncio.run(main())
    assert body == {"error": "spin timed out after 1 s (its timeout of 3600 s is capped at 1 s: --tool-max-timeout)"}
    assert time.monotonic() - started < 5


def test_cpu_time_is_limited_per_call():
    started = time.monotonic()
    body = run_tool(SPIN, SandboxLimits(cpu_s=1), timeout=20)
    assert body == {"error": "spin used too much CPU time; the CPU time limit is 1 s (--tool-cpu-s)"}
    assert time.monotonic() - started < 10


def test_a_warm_worker_gets_a_fresh_cpu_limit_each_call():
    # Three calls of ~0.6 s CPU each in one worker: more than cpu_s=1 in all, none over it.
    code = "import os, time\ndef burn():\n    end = time.process_time() + 0.6\n    while time.process_time() < end:\n        pass\n    return {'pid': os.getpid()}\n"

    async def main():
        runner = PythonToolRunner(limits=SandboxLimits(cpu_s=1))
        try:
            return [await runner.run(code, "burn", {}, 10) for _ in range(3)]
        finally:
            await runner.close()

    replies = asyncio.run(main())
    assert all("pid" in r for r in replies), replies
    assert len({r["pid"] for r in replies}) == 1  # one warm worker


def test_file_size_and_open_files_are_limited():
    write = "def write():\n    with open('big', 'wb') as f:\n        f.write(b'x' * 2**21)\n"
    body = run_tool(write, SandboxLimits(max_file_mb=1))
    assert body["error"].startswith("OSError: [Errno 27] File too large"), body
    assert body["error"].endswith("; the file size limit is 1 MiB (--tool-max-file-mb)")
    hoard = "def hoard():\n    files = [open('/dev/null') for _ in range(100)]\n    return {'n': len(files)}\n"
    body = run_tool(hoard, SandboxLimits(max_open_files=32))
    assert body["error"].startswith("OSError: [Errno 24] Too many open files"), body
    assert body["error"].endswith("; the open-file limit is 32 (--tool-max-open-files)")


@pytest.mark.skipif(not AS_ROOT, reason="RLIMIT_NPROC binds only under the sandbox user, which needs root")
def test_processes_are_limited_under_the_sandbox_user():
    code = textwrap.dedent("""
        import os, time

        def fork_many():
            pids = []
            try:
                for _ in range(100):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30)
                        os._exit(0)
                    pids.append(pid)
            except OSError as exc:
                return {"forked": len(pids), "error": str(exc)}
            return {"forked": len(pids)}
    """)
    body = run_tool(code, SandboxLimits(max_procs=20))
    # Other workers of the sandbox user on this machine count too, so maybe fewer than 20.
    assert body["forked"] < 20 and "Resource temporarily unavailable" in body["error"], body


def test_a_tool_that_leaves_a_thread_running_gets_a_fresh_worker_next_call():
    code = "import os, threading, time\ndef f():\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n    return {'pid': os.getpid()}\n"

    async def main():
        runner = PythonToolRunner()
        try:
            first = await runner.run(code, "f", {})
            await asyncio.sleep(0.2)
            return first, await runner.run(code, "f", {}), alive(int(first["pid"]))
        finally:
            await runner.close()

    first, second, first_alive = asyncio.run(main())
    assert first["pid"] != second["pid"] and not first_alive


def test_a_worker_that_dies_in_a_call_is_reported_and_replaced():
    async def main():
        runner = PythonToolRunner()
        try:
            died = await runner.run("import os\ndef f():\n    os._exit(3)\n", "f", {})
            return died, await runner.run("def g():\n    return {'ok': 1}\n", "g", {})
        finally:
            await runner.close()

    assert asyncio.run(main()) == ({"error": "f crashed the tool worker (exit code 3)"}, {"ok": 1})


def test_errors_in_tool_code_name_their_line():
    body = run_tool("def f(x):\n    y = 1\n    return {'v': x / 0}\n", x=3)
    assert body == {"error": "ZeroDivisionError: division by zero (line 3)"}


# --- what tool code can see -----------------------------------------------------------------

def test_tool_code_sees_a_scrubbed_environment_and_a_private_directory(tools):
    body = snippet(tools, textwrap.dedent("""
        import os
        result = {"env": dict(os.environ), "cwd": os.getcwd(), "mode": os.stat(".").st_mode & 0o777}
    """))
    env = body["env"]
    assert SECRET not in env
    # LC_CTYPE: Python sets it itself when it coerces a C locale to UTF-8.
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "TMPDIR"}, env
    assert env["HOME"] == env["TMPDIR"] == body["cwd"] != os.getcwd()
    assert body["mode"] == 0o700


def test_tool_code_inherits_no_file_descriptors(tmp_path):
    secret = tmp_path / "open-in-the-emulator.txt"
    secret.write_text("hunter2")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)  # even an inheritable one stays behind
    code = textwrap.dedent("""
        import os

        def fds():
            found = {}
            for name in os.listdir("/proc/self/fd"):
                try:
                    found[name] = os.readlink(f"/proc/self/fd/{name}")
                except OSError:
                    pass  # the fd os.listdir itself used, closed by now
            return found
    """)
    try:
        found = run_tool(code)
    finally:
        os.close(fd)
    assert str(secret) not in found.values()
    extra = {n: t for n, t in found.items() if int(n) > 2}
    # Beyond 0-2, only the worker's own protocol pipes.
    assert len(extra) == 2 and all(t.startswith("pipe:") for t in extra.values()), found
    assert found["0"] == "/dev/null"


def test_the_private_directory_is_removed_with_its_worker():
    async def main():
        runner = PythonToolRunner()
        body = await runner.run("import os\ndef f():\n    open('scratch', 'w').write('x')\n    return {'cwd': os.getcwd()}\n", "f", {})
        assert os.path.exists(os.path.join(body["cwd"], "scratch"))
        await runner.close()
        return body["cwd"]

    assert not os.path.exists(asyncio.run(main()))


@pytest.mark.skipif(not AS_ROOT, reason="a uid switch needs the emulator to run as root")
def test_tool_code_cannot_read_the_emulators_proc_or_files(emu, tools, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    body = snippet(tools, textwrap.dedent(f"""
        import os

        def attempt(path):
            try:
                with open(path) as f:
                    return "read " + f.read()[:20]
            except OSError as exc:
                return type(exc).__name__

        ppid = os.getppid()
        result = {{"ppid": ppid, "uid": os.getuid(), "environ": attempt(f"/proc/{{ppid}}/environ"),
                   "file": attempt({str(secret)!r})}}
    """))
    assert body["ppid"] == emu.proc.pid
    assert body["uid"] != 0
    assert body["environ"] == "PermissionError"
    assert body["file"] == "PermissionError"


def _user_namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not AS_ROOT or not _user_namespaces_work(), reason="needs root and unshare -Ur")
def test_where_the_sandbox_user_cannot_exist_tools_run_and_the_log_says_so():
    # In a user namespace mapping only root, as in some rootless containers, no uid can be switched to.
    script = textwrap.dedent("""
        import asyncio, json
        from ces_nb.emulator.python_runner import PythonToolRunner

        async def main():
            runner = PythonToolRunner()
            replies = [await runner.run("import os\\ndef f():\\n    return {'uid': os.getuid()}\\n", "f", {}) for _ in range(2)]
            await runner.close()
            print(json.dumps(replies))

        asyncio.run(main())
    """)
    done = subprocess.run(["unshare", "-Ur", sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout) == [{"uid": 0}, {"uid": 0}], done.stderr
    assert done.stderr.count("python tools run as root") == 1 and "(--tool-user)" in done.stderr


# --- results --------------------------------------------------------------------------------

def test_results_of_megabytes_work_and_past_the_limit_say_so(tools):
    body = snippet(tools, "result = {'data': 'x' * 2**20}")
    assert body.get("data") == "x" * 2**20, str(body)[:200]
    body = snippet(tools, "result = {'data': 'x' * (9 * 2**20)}")
    assert body["error"].startswith("the tool's result is 9.0 MiB; the limit is 8 MiB (--tool-max-result-mb)"), body
    assert snippet(tools, "result = {'ok': 1}") == {"ok": 1}


def test_the_cli_flags_set_the_limits(sandbox_app):
    """`ces-nb emulator --tool-timeout ... --tool-memory-mb ...` reach the sandbox, and a bad value
    stops start-up saying which."""
    server = EmulatorProcess("--app", sandbox_app, "--db", ":memory:", "--tool-timeout", "1", "--tool-max-timeout", "1",
                             "--tool-memory-mb", "256")
    client, channel = tool_client(server.address)
    try:
        slow = snippet(client, "import time\ntime.sleep(5)\nresult = 1")
        assert "timed out after 1 s" in slow["error"], slow
        big = snippet(client, "result = len(bytearray(400 * 1024 * 1024))")
        assert "the memory limit is 256 MiB (--tool-memory-mb)" in big["error"], big
    finally:
        channel.close()
        server.stop()
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--tool-memory-mb", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--tool-memory-mb must be positive, not 0" in bad.stderr, bad.stderr
