"""`ces-nb` command line: `ces-nb emulator` runs the embedded CES emulator;
`ces-nb demo` runs it behind JupyterLab on the tutorial notebooks; `ces-nb env` prints the
environment that points existing CES clients (cxas-scrapi, ...) at it."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

# The emulator's GIL switch interval (see serve() below).
SWITCH_INTERVAL_S = 0.0005


def _emulator(args: argparse.Namespace) -> int:
    if args.check:  # the load report of each --app, file by file, with its playback scripts; nothing is served
        from .emulator.export import check, demo_app_path
        from .emulator.scripts import ScriptSourceError, check_script_sources, report_scripts

        try:
            examples = check_script_sources(args.examples or [])
        except ScriptSourceError as exc:
            print(f"ces-nb emulator: {exc}", file=sys.stderr)
            return 2
        results = [check(p) for p in (args.app or [str(demo_app_path())])]
        for loaded, _, _ in results:
            if loaded is not None:
                loaded.script_sources.extend(p for p in examples if p not in loaded.script_sources)
                report_scripts(loaded)
        print("\n\n".join(report.text() for _, report, _ in results))
        return max(code for _, _, code in results)
    tls_port = _tls_port(args)
    # --tls serves from one process (its front pipes to that process's ports), so it defaults to one worker
    workers = args.workers if args.workers is not None else (1 if args.db == ":memory:" or tls_port is not None
                                                             else len(os.sched_getaffinity(0)) or 1)
    if workers < 1:
        print("ces-nb emulator: --workers takes 1 or more", file=sys.stderr)
        return 2
    if workers > 1 and args.db == ":memory:":
        print("ces-nb emulator: --workers N needs a store the worker processes share: a SQLite file (--db PATH) or a "
              "database URL; :memory: lives in one process, so use --workers 1 with it", file=sys.stderr)
        return 2
    if workers > 1 and tls_port is not None:
        print("ces-nb emulator: --tls serves from one process; use --workers 1 with --tls (or leave --workers out)",
              file=sys.stderr)
        return 2
    if workers > 1:  # a supervisor of `workers` emulators on one port and one store (workers.py). It
        # checks the apps and options while its workers start (each loads them anyway), and stops
        # them with exit 2 on a mistake; the workers leave the message to it. The flags alone it
        # checks first, before it takes the store and the ports.
        if _option_errors(args, say=_say)[0]:
            return 2
        from .emulator.store import default_db_path, display_url
        from .emulator.workers import run_supervisor

        return run_supervisor(_emulator_argv(args.raw_argv), workers, args.host, args.port, args.rest_port, args.db or default_db_path(),
                              display_url, check_inputs=lambda: _serving_inputs(args, say=_say)[0],
                              pin=args.pin_workers == "on")

    # a `--workers` worker: its supervisor checked the same inputs and says what is wrong with them
    code, inputs = _serving_inputs(args, say=_say if args.worker_ready_fd is None else (lambda message: None))
    if code:
        return code
    apps, examples, tool_limits = inputs
    from .emulator.store import StoreError, display_url

    async def serve() -> int:
        from .emulator.server import EmulatorServer

        server = EmulatorServer(apps, host=args.host, port=args.port, db=args.db, model=args.model, audio_pace=args.audio_pace,
                                examples=examples, rest_port=args.rest_port, tool_limits=tool_limits,
                                model_base_url=args.model_base_url, model_api_key_env=args.model_api_key_env,
                                require_token=args.require_token, tls_port=tls_port, tls_dir=args.tls_dir,
                                worker=args.worker_ready_fd is not None)
        try:
            address = await server.start()
        except (OSError, StoreError) as exc:
            print(f"ces-nb emulator: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Everything loaded so far (ADK, pydantic models, protos, and what the warm-up turns
        # imported) lives as long as the server: freezing it keeps full garbage collections
        # from walking it, which otherwise stalls a turn now and then for 40-100 ms.
        await server.warm_up()
        gc.collect()
        gc.freeze()
        # A turn allocates thousands of short-lived objects (pydantic events, protos): at the
        # default 700 the young generation is collected several times a turn, and a full
        # collection lands on some turn every few rounds. Ten times the room keeps the same
        # total work but makes full collections ten times rarer.
        gc.set_threshold(10_000, 10, 10)
        # The loop's threads (the store's writer, input conversion, the database driver) each keep
        # the GIL for up to the switch interval once the loop asks for it back: 5 ms by default,
        # about a whole ordinary turn. A neighbour's turn next to a client's largest inputs took
        # 2.07x -> 1.74x of quiet with 0.5 ms, on the same worker (benchmarks/isolation.py).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        app_ids = ", ".join(a.app_id for a in apps)
        # Readiness is gRPC health (`ces-nb health ADDRESS`); this line is for people.
        if args.worker_ready_fd is not None:
            # One of `--workers N`: health says SERVING once every worker can serve, when the
            # supervisor says go (and it prints for all of them).
            os.write(args.worker_ready_fd, b"ready")
            os.close(args.worker_ready_fd)
            await asyncio.get_running_loop().run_in_executor(None, os.read, args.worker_go_fd, 1)
            os.close(args.worker_go_fd)
        await server.serving()
        if args.worker_ready_fd is None:  # a worker leaves these lines to its supervisor
            print(f"CES emulator listening on {address} (apps: {app_ids}; db: {display_url(server.db)})", flush=True)
            if server.rest_url:
                print(f"CES emulator REST on {server.rest_url} (the HTTP/JSON binding)", flush=True)
            if server.tls_endpoint:
                from .emulator.tls import export_lines

                print(f"CES emulator TLS on {server.tls_endpoint} (gRPC and HTTPS REST); for clients, or eval \"$(ces-nb env)\":",
                      flush=True)
                environment = server.client_environment()
                if args.require_token is not None:  # never echo the secret into a log
                    environment["CXAS_OAUTH_TOKEN"] = "<the --require-token value>"
                print(export_lines(environment), flush=True)
        await stop.wait()
        print("CES emulator: shutting down (go_away sent to open streams)", flush=True)
        await server.stop()
        return 0

    return asyncio.run(serve())


def _say(message: str) -> None:
    print(f"ces-nb emulator: {message}", file=sys.stderr)


def _option_errors(args: argparse.Namespace, say) -> tuple[int, object]:
    """(0, tool limits) when the flags fit together; else (2, None), having said what is wrong
    through `say`. Cheap, so it runs before the store and the ports are taken or any export loads:
    a mistyped flag is reported as such, whatever else holds the store."""
    from .emulator.sandbox import SandboxLimits

    try:
        tool_limits = SandboxLimits(
            timeout_s=args.tool_timeout, max_timeout_s=args.tool_max_timeout, cpu_s=args.tool_cpu_s,
            memory_mb=args.tool_memory_mb, max_result_mb=args.tool_max_result_mb, max_file_mb=args.tool_max_file_mb,
            max_open_files=args.tool_max_open_files, max_procs=args.tool_max_procs, user=args.tool_user or None)
    except ValueError as exc:
        say(str(exc))
        return 2, None
    if (args.model_base_url or args.model_api_key_env) and not args.model:
        say("--model-base-url and --model-api-key-env go with --model, e.g. "
            "--model openai/llama3.2 --model-base-url http://localhost:11434/v1")
        return 2, None
    if args.require_token is not None:
        from .emulator.auth import TokenCheck

        try:
            TokenCheck(args.require_token)
        except ValueError as exc:
            say(str(exc))
            return 2, None
    return 0, tool_limits


def _serving_inputs(args: argparse.Namespace, say) -> tuple[int, tuple | None]:
    """(0, (apps, examples, tool limits)) when the apps and options can serve; else (2, None),
    having said what is wrong through `say`."""
    from .emulator.export import ExportError, demo_app_path, load_export
    from .emulator.scripts import ScriptSourceError, check_script_sources

    code, tool_limits = _option_errors(args, say)
    if code:
        return code, None
    try:
        # a `--workers` worker leaves the load report to its supervisor, which logged it once
        apps = [load_export(p, log_report=args.worker_ready_fd is None) for p in (args.app or [str(demo_app_path())])]
        examples = check_script_sources(args.examples or [])
    except ExportError as exc:
        say(f"cannot load app: {exc}")
        return 2, None
    except ScriptSourceError as exc:  # an --examples path that is not there
        say(str(exc))
        return 2, None
    if args.model:  # a model nothing can run exits now, not at the first turn
        from .emulator.registry import ModelError, build_model

        try:
            build_model(args.model, args.model_base_url, args.model_api_key_env)
        except ModelError as exc:
            say(str(exc))
            return 2, None
    return 0, (apps, examples, tool_limits)


DEFAULT_TLS_PORT = 50553


def _tls_port(args: argparse.Namespace) -> int | None:
    """--tls-port, or with --tls alone --port + 2 (50553 by default; 0 with --port 0)."""
    if args.tls_port is not None:
        return args.tls_port
    if not args.tls:
        return None
    return 0 if args.port == 0 else args.port + 2


def _env(args: argparse.Namespace) -> int:
    """The `export` lines for a client of a TLS emulator (`eval "$(ces-nb env)"`)."""
    from .emulator.tls import client_environment, ensure_tls_files, export_lines

    try:
        files = ensure_tls_files(args.tls_dir)
    except OSError as exc:
        print(f"ces-nb env: {exc}", file=sys.stderr)
        return 1
    host = args.host.strip("[]")
    endpoint = f"localhost:{args.tls_port}" if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::") else f"{host}:{args.tls_port}"
    print(export_lines(client_environment(files, endpoint, args.token)))
    return 0


def _emulator_argv(argv: list[str]) -> list[str]:
    """This command's own `ces-nb emulator` options, for its worker processes."""
    return argv[argv.index("emulator") + 1:] if "emulator" in argv else argv


def _health(args: argparse.Namespace) -> int:
    from .local_emulator import DOWN, FOREIGN, SERVING, foreign_message, health, wait_until_serving

    if args.wait and wait_until_serving(args.address, args.wait):
        state = SERVING
    else:
        state = health(args.address)
    if state == SERVING:
        print(f"a CES emulator serves at {args.address}")
        return 0
    if state == FOREIGN:
        print(f"ces-nb health: {foreign_message(args.address)}", file=sys.stderr)
    elif state == DOWN:
        print(f"ces-nb health: nothing listens at {args.address}; start it with `ces-nb emulator`", file=sys.stderr)
    else:
        print(f"ces-nb health: the emulator at {args.address} is still starting; wait with --wait SECONDS", file=sys.stderr)
    return 1


def _demo(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import subprocess
    from pathlib import Path

    from .errors import CesError
    from .local_emulator import ensure_emulator

    if importlib.util.find_spec("jupyterlab") is None:
        print("ces-nb demo: JupyterLab is not installed; pip install 'ces_nb[demo]' (or run `make demo`)", file=sys.stderr)
        return 2
    notebooks = Path(args.notebooks).resolve()
    if not notebooks.is_dir():
        print(f"ces-nb demo: no notebooks folder at {notebooks}; pass --notebooks PATH", file=sys.stderr)
        return 2
    try:
        address = ensure_emulator(f"127.0.0.1:{args.port}", rest_port=args.rest_port)  # stopped when this command exits
    except CesError as exc:
        print(f"ces-nb demo: {exc}", file=sys.stderr)
        return 1
    rest = f"http://127.0.0.1:{args.rest_port}"
    print(f"ces-nb demo: CES emulator at {address} (REST at {rest}); starting JupyterLab on {notebooks} "
          f"(open the URL below; Ctrl-C stops both)", flush=True)
    env = {**os.environ, "CES_NB_EMULATOR": address, "CES_NB_REST": rest}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.root_dir={notebooks}", f"--ServerApp.port={args.lab_port}", *args.lab_args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI machines run as root
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def _sandbox_flags(parser: argparse.ArgumentParser) -> None:
    """The limits on pythonFunction tool code (ces_nb.emulator.sandbox.SandboxLimits documents each)."""
    from .emulator.sandbox import SandboxLimits

    d = SandboxLimits()
    tools = parser.add_argument_group("python tool sandbox", "limits on the export's pythonFunction code; an export can't raise them")
    tools.add_argument("--tool-timeout", type=float, default=d.timeout_s, metavar="S",
                       help=f"seconds a call may run when its tool sets no timeout (default {d.timeout_s:g})")
    tools.add_argument("--tool-max-timeout", type=float, default=d.max_timeout_s, metavar="S",
                       help=f"the most any call may run, whatever its tool's timeout (default {d.max_timeout_s:g})")
    tools.add_argument("--tool-cpu-s", type=int, default=d.cpu_s, metavar="S", help=f"CPU seconds per call (default {d.cpu_s})")
    tools.add_argument("--tool-memory-mb", type=int, default=d.memory_mb, metavar="MB",
                       help=f"address space of a tool worker (default {d.memory_mb})")
    tools.add_argument("--tool-max-result-mb", type=float, default=d.max_result_mb, metavar="MB",
                       help=f"largest result a tool may return (default {d.max_result_mb:g})")
    tools.add_argument("--tool-max-file-mb", type=int, default=d.max_file_mb, metavar="MB",
                       help=f"largest file tool code may write (default {d.max_file_mb})")
    tools.add_argument("--tool-max-open-files", type=int, default=d.max_open_files, metavar="N",
                       help=f"open files per tool worker (default {d.max_open_files})")
    tools.add_argument("--tool-max-procs", type=int, default=d.max_procs, metavar="N",
                       help=f"processes and threads of the tool user (default {d.max_procs}; binds only when the emulator runs as root)")
    tools.add_argument("--tool-user", default=d.user, metavar="USER",
                       help=f"as root, run tool code as this user (default {d.user}; '' keeps root)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ces-nb", description="ces_nb: explore CES agent sessions in Jupyter")
    sub = parser.add_subparsers(dest="command", required=True)
    emu = sub.add_parser("emulator", help="run the embedded CES emulator in the foreground")
    emu.add_argument("--check", action="store_true",
                     help="print each --app's load report (what runs, runs approximately or is ignored, file by file) "
                          "and exit: 0 when every app loads, 2 when one cannot; nothing is served")
    emu.add_argument("--app", action="append", metavar="PATH",
                     help="a CES app export (folder or zip); repeat for several apps (default: the SkyWay demo app)")
    emu.add_argument("--examples", action="append", metavar="PATH",
                     help="more conversations to play back offline: a golden (cxas-scrapi YAML), a CES evaluation "
                          "(JSON/YAML) or a ces_nb transcript, or a folder of them; repeatable")
    emu.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    emu.add_argument("--port", type=int, default=50551, help="port to bind (default 50551; 0 picks a free one)")
    emu.add_argument("--rest-port", type=int, default=None, metavar="PORT",
                     help="also serve the REST (HTTP/JSON) binding on PORT, on the same host (0 picks a free one)")
    emu.add_argument("--tls", action="store_true",
                     help="also serve TLS, gRPC and HTTPS REST on one port (--tls-port, default --port + 2 = 50553), with a "
                          "certificate for localhost from a local CA kept in ~/.local/share/ces_nb/tls; prints the client's "
                          "environment (the same as `ces-nb env`)")
    emu.add_argument("--tls-port", type=int, default=None, metavar="PORT",
                     help="the TLS port (implies --tls; 0 picks a free one)")
    emu.add_argument("--tls-dir", default=None, metavar="DIR", help=argparse.SUPPRESS)
    emu.add_argument("--require-token", default=None, metavar="TOKEN",
                     help="accept only `authorization: Bearer TOKEN` on the CES services (gRPC and REST); others get "
                          "UNAUTHENTICATED. Without it any token, or none, is accepted")
    emu.add_argument("--db", default=None,
                     help="session store: a SQLite file, a PostgreSQL URL (postgresql://USER@HOST:PORT/DB, shared by several "
                          "emulators; pip install 'ces_nb[postgres]'), any SQLAlchemy URL, or :memory: "
                          "(default: ~/.local/share/ces_nb/emulator.db)")
    emu.add_argument("--model", default=None, metavar="ID",
                     help="a real model instead of the offline playback model: a Gemini id (e.g. gemini-2.5-flash, needs "
                          "GOOGLE_API_KEY or Vertex settings) or a LiteLLM model string (e.g. openai/llama3.2; "
                          "pip install 'ces_nb[model]')")
    emu.add_argument("--model-base-url", default=None, metavar="URL",
                     help="with a LiteLLM --model: the OpenAI-compatible server to call (Ollama: http://localhost:11434/v1)")
    emu.add_argument("--model-api-key-env", default=None, metavar="VAR",
                     help="the environment variable holding the model's API key (default with --model-base-url: "
                          "OPENAI_API_KEY if set, else a dummy key, as local servers need none)")
    emu.add_argument("--audio-pace", type=float, default=1.0,
                     help="agent audio goes out at this fraction of its playing time: 1 = as spoken, so users can "
                          "barge in (default); 0 = as fast as possible")
    emu.add_argument("--workers", type=int, default=None, metavar="N",
                     help="serve from N processes on the same port and store, so turns use N cores (default: the "
                          "number of cores; 1 with --db :memory:, which lives in one process)")
    emu.add_argument("--pin-workers", choices=("on", "off"), default="on",
                     help="with --workers N: each worker on a core of its own, when there are as many workers as "
                          "cores this process may use (default on); off leaves their placement to the kernel")
    emu.add_argument("--worker-ready-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    emu.add_argument("--worker-go-fd", type=int, default=None, help=argparse.SUPPRESS)
    _sandbox_flags(emu)
    emu.add_argument("--log-level", default="WARNING", help="server log level (default WARNING)")
    emu.set_defaults(func=_emulator)
    check = sub.add_parser("health", help="exit 0 when a CES emulator serves at ADDRESS (asked through gRPC health)")
    check.add_argument("address", nargs="?", default=None, help="host:port (default $CES_NB_EMULATOR or 127.0.0.1:50551)")
    check.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="keep asking for up to SECONDS")
    check.set_defaults(func=_health, log_level="WARNING")
    env = sub.add_parser("env", help="print `export` lines that point CES clients (cxas-scrapi, the official client) "
                                      "at a TLS emulator: eval \"$(ces-nb env)\"")
    env.add_argument("--tls-port", type=int, default=DEFAULT_TLS_PORT, help=f"the emulator's TLS port (default {DEFAULT_TLS_PORT})")
    env.add_argument("--host", default="127.0.0.1", help="the emulator's host (default 127.0.0.1; dialled as localhost)")
    env.add_argument("--token", default=None, help="the emulator's --require-token, if it has one (default: any token)")
    env.add_argument("--tls-dir", default=None, metavar="DIR", help=argparse.SUPPRESS)
    env.set_defaults(func=_env, log_level="WARNING")
    demo = sub.add_parser("demo", help="start the emulator and JupyterLab on the tutorial notebooks")
    demo.add_argument("--notebooks", default="notebooks", help="folder to open (default ./notebooks)")
    demo.add_argument("--port", type=int, default=50551, help="emulator port (default 50551; reused if one listens there)")
    demo.add_argument("--rest-port", type=int, default=50552, help="the emulator's REST (HTTP/JSON) port (default 50552)")
    demo.add_argument("--lab-port", type=int, default=8888, help="JupyterLab port (default 8888)")
    demo.add_argument("lab_args", nargs="*", help="more JupyterLab options, after --")
    demo.set_defaults(func=_demo, log_level="WARNING")
    from .evals.command import add_eval_parser

    add_eval_parser(sub)
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "health" and not args.address:
        from .local_emulator import default_address

        args.address = default_address()
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
