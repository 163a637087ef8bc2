"""The embedded CES emulator: a grpc.aio server for SessionService, AgentService
(read side) and ToolService, under google.cloud.ces.v1 and v1beta, v1beta's EvaluationService
with google.longrunning.Operations, plus gRPC health and server reflection; optionally REST, TLS (tls.py) and a required bearer token (auth.py)."""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
from google.adk.sessions import InMemorySessionService
from google.cloud import ces_v1
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import RequireToken, TokenCheck
from .export import LoadedApp, demo_app_path, load_export  # noqa: F401 (demo_app_path: re-exported)
from .evaluation_store import EvaluationStore
from .reflection import OPERATIONS_SERVICE, register_service_descriptors, service_names
from .registry import AppRegistry
from .runtime import AppRuntime
from .fair_share import FairShare
from .services.agent import AgentService
from .services.evaluation import EvaluationService
from .services.session import SessionService
from .sandbox import SandboxLimits
from .services.tool import ToolService
from .store import StoreLock, default_db_path, is_server_database, open_sqlite_file, open_store, sqlite_file  # noqa: F401 (default_db_path: re-exported)
from .versions import AlsoServedAs, Unserved

log = logging.getLogger("ces_nb.emulator")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50551
# Bigger than gRPC's 4 MiB default so a large input gets a clear INVALID_ARGUMENT
# from the emulator rather than a bare RESOURCE_EXHAUSTED from the transport.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


# Warm-up (see EmulatorServer.warm_up): at most this long for one turn, and for all of it.
WARM_UP_TURN_S = 2.0
WARM_UP_BUDGET_S = 15.0


class _NoToolCode:
    """Stands in for the python-tool runner during warm-up: tool code may have side effects."""

    async def run(self, code: str, function: str, args: dict, *_, **__) -> dict:
        return {"warm_up": f"{function} does not run during the emulator's warm-up"}


class EmulatorServer:
    def __init__(self, apps: list[LoadedApp] | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 db: str | None = None, model: str | None = None, audio_pace: float = 1.0, examples: list[str] | None = None,
                 rest_port: int | None = None, tool_limits: SandboxLimits | None = None,
                 model_base_url: str | None = None, model_api_key_env: str | None = None,
                 require_token: str | None = None, tls_port: int | None = None, tls_dir: str | None = None,
                 worker: bool = False):
        # One of `--workers N` processes (workers.py): the supervisor holds the store and the
        # port; this process shares the port (SO_REUSEPORT) and the store with its siblings.
        self.worker = worker
        self.audio_pace = audio_pace
        # --require-token: only `authorization: Bearer <it>` (auth.py); None accepts any token or none
        self.token = TokenCheck(require_token) if require_token is not None else None
        # --tls: gRPC and HTTPS REST on this port too (tls.py); 0 picks a free one
        self.tls_port = tls_port
        self.tls_dir = tls_dir
        self.tls = None
        self.tls_files = None
        self._tls_rest = None  # the REST binding behind TLS when --rest-port was not asked for
        self.tool_limits = tool_limits  # what pythonFunction code may use (sandbox.py)
        self.rest_port = rest_port  # the HTTP/JSON binding (rest.py) on this port too; 0 picks a free one
        self.rest = None
        self.apps = apps if apps is not None else [load_export(str(demo_app_path()))]
        for app in self.apps:  # `--examples`: more scripts for the playback model (scripts.py reads them)
            app.script_sources.extend(p for p in examples or [] if p not in app.script_sources)
        self.host = host
        self.port = port
        self.db = db or default_db_path()
        self.model = model
        # With a LiteLLM model string: its OpenAI-compatible server, and the variable holding its key.
        self.model_base_url = model_base_url
        self.model_api_key_env = model_api_key_env
        self.server: grpc.aio.Server | None = None
        self.registry: AppRegistry | None = None
        self.sessions: SessionService | None = None
        self.evaluations: EvaluationService | None = None
        self._health: health.aio.HealthServicer | None = None
        self._store_lock: StoreLock | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def rest_url(self) -> str | None:
        return self.rest.url if self.rest is not None else None

    async def start(self) -> str:
        """Checks and holds the store, binds and starts serving; returns host:port (the real port
        when port=0). Raises StoreError or OSError with a message that says what to do."""
        path = sqlite_file(self.db)
        self._store_lock = open_sqlite_file(path) if path and not self.worker else None
        try:
            store = await open_store(self.db)
        except BaseException:
            self._release_store()
            raise
        try:
            self.registry = AppRegistry(self.apps, store, self.model, self.tool_limits,
                                        model_base_url=self.model_base_url, model_api_key_env=self.model_api_key_env)
        except BaseException:
            self._release_store()
            raise
        # siblings (`--workers`), or other emulators on a shared database server, write the same sessions
        shared = self.worker or is_server_database(self.db)
        for runtime in self.registry.runtimes.values():
            runtime.shared_store = shared
        fair_share = FairShare()  # one event loop's share between its clients
        self.sessions = SessionService(self.registry, fair_share, audio_pace=self.audio_pace)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second emulator on the same port would then
            # bind too and take half of the traffic. One port, one emulator; its `--workers` share
            # it, and the supervisor keeps other emulators out (workers.py).
            ("grpc.so_reuseport", 1 if self.worker else 0),
        ]
        self.server = grpc.aio.server(options=options, interceptors=[RequireToken(self.token)] if self.token else None)
        agents, tools = AgentService(self.registry), ToolService(self.registry, fair_share)
        # v1beta's alone, its runs and results kept beside the conversations (evaluation_store.py)
        self.evaluations = EvaluationService(self.registry, self.sessions, agents, EvaluationStore(store))
        v1 = (self.sessions.handler(), agents.handler(), tools.handler())
        # v1, then v1beta on the same handlers, the EvaluationService and its operations, then a
        # clear UNIMPLEMENTED for any other CES method
        self.server.add_generic_rpc_handlers((*v1, AlsoServedAs(v1), self.evaluations.handler(),
                                              self.evaluations.operations.handler(), Unserved()))
        rest_services = {"SessionService": self.sessions, "AgentService": agents, "ToolService": tools,
                         "EvaluationService": self.evaluations}
        self._health = health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        register_service_descriptors()
        reflection.enable_server_reflection(
            [*service_names(), OPERATIONS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        try:
            port = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError:  # newer grpcio raises where older ones returned 0
            port = 0
        if port == 0:
            self._release_store()
            raise OSError(
                f"port {self.port} on {self.host} is taken (another emulator, or another program, listens there); "
                f"stop it, or pick another port: ces-nb emulator --port {self.port + 1} (or --port 0 for any free one)"
            )
        self.port = port
        # -- REST (rest.py): the same handlers over HTTP/JSON, bound now so a taken port fails here
        if self.rest_port is not None:
            from .rest import RestServer

            self.rest = RestServer(rest_services, self.host, self.rest_port, self.token, reuse_port=self.worker)
            try:
                self.rest.bind()
            except OSError:
                self.rest = None
                await self.server.stop(None)
                self.server = None
                self._release_store()
                raise
            self.rest_port = self.rest.port
        # -- end REST
        # -- TLS (tls.py): gRPC and HTTPS REST on one more port, piped to the servers above
        if self.tls_port is not None:
            try:
                await self._bind_tls(rest_services)
            except BaseException:
                await self._stop_tls()
                if self.rest is not None:
                    await self.rest.stop(0)
                    self.rest = None
                await self.server.stop(None)
                self.server = None
                self._release_store()
                raise
        # -- end TLS
        # Bound, but not ready for turns until serving() says so (after the warm-up).
        for name in ["", *service_names()]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.rest is not None:
            await self.rest.start()
        if self.tls is not None:
            if self._tls_rest is not None:
                await self._tls_rest.start()
            await self.tls.start()
        return self.address

    async def _bind_tls(self, services: dict) -> None:
        from .rest import RestServer
        from .tls import TlsFront, ensure_tls_files

        self.tls_files = await asyncio.to_thread(ensure_tls_files, self.tls_dir)
        rest_host, rest_port = self.host, self.rest_port
        if self.rest is None:  # TLS REST needs the binding: a private one, on loopback only
            self._tls_rest = RestServer(services, "127.0.0.1", 0, self.token)
            self._tls_rest.bind()
            rest_host, rest_port = "127.0.0.1", self._tls_rest.port
        self.tls = TlsFront(self.host, self.tls_port, self.tls_files, self.port, rest_port, rest_host)
        self.tls.bind()
        self.tls_port = self.tls.port

    async def _stop_tls(self, grace: float = 0) -> None:
        tls, self.tls = self.tls, None
        rest, self._tls_rest = self._tls_rest, None
        if tls is not None:
            await tls.stop(grace)
        if rest is not None:
            await rest.stop(grace)

    @property
    def tls_endpoint(self) -> str | None:
        """host:port for TLS clients (the certificate names localhost), with --tls."""
        return self.tls.endpoint if self.tls is not None else None

    def client_environment(self) -> dict[str, str]:
        """The environment a TLS client (cxas-scrapi, the official client) needs, with --tls."""
        from .tls import client_environment

        if self.tls is None:
            raise RuntimeError("the emulator serves no TLS; start it with tls_port (ces-nb emulator --tls)")
        token = self.token.token if self.token is not None else None
        return client_environment(self.tls_files, self.tls_endpoint, token)

    async def serving(self) -> None:
        """Tell health checks the emulator is ready: clients wait for this, not for a log line."""
        for name in ["", *service_names()]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def warm_up(self, turn_budget_s: float = WARM_UP_TURN_S, budget_s: float = WARM_UP_BUDGET_S) -> int:
        """Plays the user side of each app's examples once, on a scratch in-memory store that no
        client sees. ADK and google-genai import a lot on first use: this moves that from the first
        client turn to startup, where `ces-nb emulator` can then freeze it out of garbage
        collection. Skipped with a real model.

        Tool code never runs here: a python tool may book, write or send something, and no client
        asked for this turn. Its calls get a stand-in answer. A turn slower than `turn_budget_s`,
        or a warm-up past `budget_s` in all, is given up: warming must never delay serving much.
        Returns how many turns it played."""
        played = 0
        if self.registry is None:
            return played
        if any(app.tool_kind(t) == "python_function" for app in self.apps for t in app.tools.values()):
            await self.registry.python_runner.prewarm()  # a worker, started; no tool code runs in it
        if self.model:
            return played
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        for app in self.apps:
            scratch = AppRuntime(app, InMemorySessionService(), _NoToolCode())
            # The commit failpoint aims at client turns: held here, it would stall start-up (each
            # warm-up turn over its budget) and never be what a kill lands in.
            scratch.turns.commit_delay_s = 0
            for n, script in enumerate(scratch.scripts):  # the examples as the playback model reads them
                session_id = f"warm-up-{n}"
                config = ces_v1.SessionConfig(session=f"projects/-/locations/-/apps/{app.app_id}/sessions/{session_id}")
                for turn in script.turns:
                    if not turn.user.strip():
                        continue
                    left = deadline - loop.time()
                    if left <= 0:
                        log.info("warm-up stopped after %g s (its budget)", budget_s)
                        return played
                    try:
                        await asyncio.wait_for(
                            scratch.run_turn_to_end(session_id, config, [ces_v1.SessionInput(text=turn.user)]),
                            min(turn_budget_s, left))
                        played += 1
                    except asyncio.TimeoutError:
                        log.info("warm-up of %s, example %r: a turn took over %g s; skipped", app.app_id, script.name, turn_budget_s)
                        break
                    except Exception as exc:  # best effort: a client's turn would meet the same error
                        log.debug("warm-up of %s, example %r: %s", app.app_id, script.name, exc)
                        break
        return played

    async def stop(self, grace: float = 2.0) -> None:
        """Sends go_away to open bidi streams, then stops within `grace` seconds."""
        if self.server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.sessions is not None:
            await self.sessions.go_away()
        rest, self.rest = self.rest, None
        await asyncio.gather(self.server.stop(grace), self._stop_tls(grace), *([rest.stop(grace)] if rest is not None else []))
        if self.evaluations is not None:
            await self.evaluations.close()
        if self.registry is not None:
            await self.registry.close()
        self._release_store()
        self.server = None

    def _release_store(self) -> None:
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

