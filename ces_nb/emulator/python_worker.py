"""Worker process for pythonFunction tools, started and killed by python_runner as
`python -I python_worker.py CONFIG_JSON`. It only imports the standard library (and
ces_python, which does too).

Before it runs any export code it drops to the sandbox user (when started as root), arms
the parent-death signal, and sets its resource limits. Then it serves frames,
`<length>\\n<JSON>`, on private copies of its stdin and stdout: fd 0 becomes /dev/null and
fd 1 a copy of stderr, so tool code that prints or reads stdin cannot touch the protocol.

A reply carries `retire: true` when the worker should not be reused (it ran out of
memory or CPU time, or tool code left threads running). The parent-death signal fires
when the thread that started the worker exits: the emulator's event loop thread.

A request is `{"code", "function", "args"}`, plus optionally `filename` (the export's
path of the code, which tracebacks name), `context` (the session: state, agent_name,
user_content...) and `callback` (a CES callback kind: args are then runtime objects as
dicts, see ces_python). The code runs with CES's globals (`context`, `tools`, `Part`,
`Content`, `LlmResponse`...). While it runs, `tools.<name>(args)` writes a frame
`{"tool_call": {"name", "args", "state"}}` and waits for the emulator's answer,
`{"result", "state_delta"}`, on the same pipes. The reply is `{"result", "state_delta"}`
or `{"error", "traceback"}`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import importlib.util
import json
import linecache
import math
import os
import resource
import shutil
import signal
import sys
import threading
import traceback

# Imported before dropping privileges when the sandbox user cannot read the standard library
# (e.g. Python lives under /root), so that tool code can still import these.
PRELOAD = (
    "_strptime array base64 bisect calendar collections collections.abc copy csv dataclasses datetime "
    "decimal difflib encodings.ascii encodings.cp1252 encodings.idna encodings.latin_1 encodings.utf_16 "
    "enum fractions functools hashlib heapq hmac html inspect io itertools locale math operator pprint random re "
    "secrets statistics string struct textwrap time typing unicodedata urllib.parse uuid zoneinfo"
).split()

PR_SET_PDEATHSIG = 1


def _load_runtime():
    """ces_python, by path (`-I` leaves this folder off sys.path), before privileges drop."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ces_python.py")
    spec = importlib.util.spec_from_file_location("ces_python", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ces_python"] = module
    spec.loader.exec_module(module)
    return module


ces = _load_runtime()
_OWN_FILES = {os.path.abspath(__file__), os.path.abspath(ces.__file__)}


class _CpuLimit(BaseException):
    """Raised by the SIGXCPU handler; a BaseException so `except Exception` in tool code lets it by."""


class _State:
    in_call = False


def _drop_privileges(uid: int, gid: int) -> str | None:
    """Switches to uid and gid for good; returns why not, if it cannot (e.g. in a user
    namespace that maps no such ids): the worker then keeps running as root."""
    try:
        os.setgroups([])
        if not _stdlib_readable_as(uid, gid):
            for name in PRELOAD:
                with contextlib.suppress(ImportError):
                    importlib.import_module(name)
        os.setgid(gid)  # as root, these set the real, effective and saved ids
        os.setuid(uid)
    except OSError as exc:
        return f"python tools run as root: cannot switch to uid {uid}, gid {gid}: {exc}"
    return None


def _stdlib_readable_as(uid: int, gid: int) -> bool:
    stdlib = os.path.dirname(os.__file__)
    dirs = [d for d in (stdlib, os.path.join(stdlib, "lib-dynload")) if os.path.isdir(d)]
    os.setegid(gid)
    os.seteuid(uid)  # for a moment: the saved uid stays root
    try:
        for d in dirs:
            os.listdir(d)
        return True
    except OSError:
        return False
    finally:
        os.seteuid(0)
        os.setegid(0)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the emulator dies, however it dies. Armed after the uid
    change, which clears it; the ppid check covers a parent that died before."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):  # not Linux: poll for the parent instead
        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1)
            os._exit(1)

        threading.Thread(target=watch, name="ces-nb-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _limit(which: int, value: int) -> None:
    """Sets soft and hard limits to value, or to the current hard limit if that is lower."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_limits(config: dict) -> None:
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, config["open_files"])
    if config.get("procs"):
        _limit(resource.RLIMIT_NPROC, config["procs"])
    # A lifetime budget: each call gets cpu_s of it as a soft limit (see _answer).
    _limit(resource.RLIMIT_CPU, math.ceil(_cpu_used()) + 10 * config["cpu_s"])
    # Past RLIMIT_FSIZE a write fails with EFBIG instead of SIGXFSZ killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def on_sigxcpu(signum, frame):
        if _State.in_call:
            raise _CpuLimit()

    signal.signal(signal.SIGXCPU, on_sigxcpu)


def _private_pipes():
    """The protocol's own copies of stdin and stdout (os.dup: not inherited by execs)."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return proto_in, proto_out


def _limit_hit(exc: BaseException) -> str | None:
    """Which SandboxLimits field an exception from tool code ran into, if any."""
    if isinstance(exc, MemoryError):
        return "memory_mb"
    if isinstance(exc, OSError):
        return {errno.EFBIG: "max_file_mb", errno.EMFILE: "max_open_files"}.get(exc.errno)
    return None


class _Channel:
    """The protocol's pipes, for tools.<name>() calls made while tool code runs."""

    proto_in = None
    proto_out = None


def _write(body: bytes) -> None:
    _Channel.proto_out.write(b"%d\n" % len(body) + body)
    _Channel.proto_out.flush()


def _call_tool(context, name: str, args: dict) -> dict:
    """Asks the emulator to run another tool of the app; waits for its answer."""
    state = context.state if context is not None else {}
    _write(json.dumps({"tool_call": {"name": name, "args": args, "state": state}}, default=str).encode())
    header = _Channel.proto_in.readline()
    if not header:
        raise ConnectionError("the emulator closed the tool worker's pipe")
    answer = json.loads(_Channel.proto_in.read(int(header)))
    if context is not None:
        for key, value in (answer.get("state_delta") or {}).items():
            if value is None:
                context.state.pop(key, None)
            else:
                context.state[key] = value
    if "error" in answer:
        return {"error": answer["error"]}
    result = answer.get("result")
    return result if isinstance(result, dict) else {"result": result}


def _compile(request: dict, compiled: dict):
    code = request["code"]
    filename = request.get("filename") or f"<tool {request['function']}>"
    key = (code, filename)
    if key not in compiled:
        compiled[key] = compile(code, filename, "exec")
        if not filename.startswith("<"):  # so tracebacks show the app's source lines
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    return compiled[key], filename


def _run(request: dict, compiled: dict) -> dict:
    function = request["function"]
    kind = request.get("callback")
    filename = request.get("filename") or f"<tool {function}>"
    before: dict = {}
    context = None
    try:
        code, filename = _compile(request, compiled)
        raw = request.get("context") or {}
        context = ces.CallbackContext(raw) if kind else ces.ToolContext(raw)
        before = ces.snapshot(context.state)
        namespace: dict = {"__name__": "ces_tool",
                           **ces.globals_for(context, ces.Tools(lambda n, a: _call_tool(context, n, a)))}
        # Tool code may print: to stderr, which the emulator logs.
        with contextlib.redirect_stdout(sys.stderr):
            exec(code, namespace)  # noqa: S102 - the app's own tool code
            fn = namespace.get(function)
            if not callable(fn):
                raise NameError(f"the {'callback' if kind else 'tool'} code defines no function named {function!r}")
            if kind:
                values = ces.callback_arguments(kind, request.get("args", {}), context)
                result = ces.encode_return(ces.call_with(fn, kind, values))
                # What the code changed in place counts too (a request's contents, a tool's input).
                mutated = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in values.items()
                           if k in ("llm_request", "llm_response", "input", "tool_response")}
                return {"result": result, "state_delta": ces.state_delta(before, context.state), "mutated": mutated}
            result = fn(**request.get("args", {}))
        return {"result": result, "state_delta": ces.state_delta(before, context.state)}
    except _CpuLimit:
        raise
    except BaseException as exc:  # a tool's failure is reported, never fatal (SystemExit too)
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f for f in reversed(tb) if f.filename == filename), None)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if where is not None:
            message += f" (line {where.lineno})" if filename.startswith("<") else f" ({filename}, line {where.lineno})"
        reply = {"error": message}
        if not filename.startswith("<"):
            frames = traceback.StackSummary.from_list([f for f in tb if os.path.abspath(f.filename) not in _OWN_FILES])
            reply["traceback"] = "Traceback (most recent call last):\n" + "".join(frames.format()) + \
                "".join(traceback.format_exception_only(type(exc), exc))
        if context is not None and kind:  # what a callback wrote before it failed still counts
            reply["state_delta"] = ces.state_delta(before, context.state)
        if limit := _limit_hit(exc):
            reply["limit"] = limit
        if isinstance(exc, MemoryError) or not isinstance(exc, Exception):
            reply["retire"] = True
        return reply


def _answer(request: dict, compiled: dict, cpu_s: int, cpu_hard: int, threads: int) -> bytes:
    # Re-arm the per-call CPU limit: what this worker used so far, plus cpu_s. (Between calls
    # the handler ignores SIGXCPU, and the next call re-arms it.)
    start = math.ceil(_cpu_used())
    resource.setrlimit(resource.RLIMIT_CPU, (min(start + cpu_s, cpu_hard), cpu_hard))
    _State.in_call = True
    try:
        reply = _run(request, compiled)
        # A fresh worker takes over when tool code left threads running, or before the
        # lifetime CPU budget could cut the next call short.
        if threading.active_count() > threads or start + 2 * cpu_s + 1 > cpu_hard:
            reply["retire"] = True
        try:
            return json.dumps(reply, default=str).encode()
        except MemoryError:
            return json.dumps({"error": "MemoryError (serializing the result)", "limit": "memory_mb", "retire": True}).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            return json.dumps({"error": f"the result is not JSON: {exc}", "retire": reply.get("retire", False)}).encode()
    except _CpuLimit:
        _State.in_call = False
        return json.dumps({"error": f"{request['function']} used too much CPU time", "limit": "cpu_s", "retire": True}).encode()
    finally:
        _State.in_call = False


def _serve(proto_in, proto_out, cpu_s: int) -> None:
    compiled: dict[str, object] = {}
    threads = threading.active_count()
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    _Channel.proto_in, _Channel.proto_out = proto_in, proto_out
    while header := proto_in.readline():
        _write(_answer(json.loads(proto_in.read(int(header))), compiled, cpu_s, cpu_hard, threads))


def main() -> None:
    config = json.loads(sys.argv[1])
    ready: dict = {}
    if config.get("uid") is not None and (warning := _drop_privileges(config["uid"], config["gid"])):
        ready["warning"] = warning
    _die_with_parent(config["parent"])
    _set_limits(config)
    proto_in, proto_out = _private_pipes()
    body = json.dumps(ready).encode()
    proto_out.write(b"%d\n" % len(body) + body)  # ready: the runner sends requests only after this
    proto_out.flush()
    _serve(proto_in, proto_out, config["cpu_s"])
    # stdin closed: the emulator is done with this worker (one killed never gets here).
    shutil.rmtree(config["home"], ignore_errors=True)


if __name__ == "__main__":
    main()
