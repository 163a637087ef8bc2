"""connect(): the official Session, Agent and Tool service clients, for real CES or an emulator."""

from __future__ import annotations

from typing import Any

from .convert.tools import client_function_schema
from .errors import CesError, explain
from .local_emulator import default_address, ensure_emulator
from .names import EMULATOR_PARENT, agent_service_client, app_parent, parse_app, parse_conversation, session_path  # noqa: F401 (public here too)
from .session import Session

def regional_endpoint(location: str) -> str:
    """CES serves `global` at ces.googleapis.com and a region at its regional (rep) endpoint."""
    return "ces.googleapis.com" if location in ("", "global") else f"ces.{location}.rep.googleapis.com"


class Client:
    """A connection: `.sessions`, `.agents` and `.tools` are the official clients."""

    def __init__(self, *, target: str, emulator: bool, app: str = "", channel=None, credentials=None, api_endpoint: str | None = None):
        from google.cloud import ces_v1
        from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
        from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
        from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

        self.target = target
        self.emulator = emulator
        self._channel = channel
        self._tool_cache: dict[str, dict[str, Any]] = {}  # app -> its tools, by name, id and display name
        if channel is not None:
            # The only way the official clients reach a plaintext server: a transport on our channel.
            self.sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
            self.agents = ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))
            self.tools = ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel))
        else:
            options = {"api_endpoint": api_endpoint} if api_endpoint else None
            self.sessions = ces_v1.SessionServiceClient(credentials=credentials, client_options=options)
            self.agents = ces_v1.AgentServiceClient(credentials=credentials, client_options=options)
            self.tools = ces_v1.ToolServiceClient(credentials=credentials, client_options=options)
        self.app = ""
        self.app = self.resolve_app(app) if app else (self._first_app() if emulator else "")

    # -- apps --------------------------------------------------------------------

    def apps(self, parent: str | None = None) -> list[str]:
        """App resource names under `parent` (default: the emulator's, or the current app's location)."""
        parent = parent or (app_parent(self.app) if self.app else EMULATOR_PARENT)
        try:
            return [a.name for a in self.agents.list_apps(parent=parent)]
        except Exception as exc:
            raise explain(exc, target=self.target) from None

    def _first_app(self) -> str:
        apps = self.apps(EMULATOR_PARENT)
        if not apps:
            raise CesError(f"the emulator at {self.target} serves no apps; start it with `ces-nb emulator --app PATH`")
        return apps[0]

    def resolve_app(self, app: str | None) -> str:
        """A full app name from a full name, a bare app id (same project/location), or the default."""
        if not app:
            if not self.app:
                raise CesError("no app: pass connect('projects/P/locations/L/apps/A') or session(app=...)")
            return self.app
        if app.startswith("projects/"):
            return app
        location = agent_service_client().parse_common_location_path(app_parent(self.app) if self.app else EMULATOR_PARENT)
        return agent_service_client().app_path(location["project"], location["location"], app)

    def check(self, timeout: float = 10.0) -> None:
        """Reach the server and read the app (or list the apps): a CesError saying what to
        do when the connection would not work."""
        try:
            if self.app:
                self.agents.get_app(name=self.app, retry=None, timeout=timeout)
            else:
                list(self.agents.list_apps(parent=EMULATOR_PARENT, retry=None, timeout=timeout))
        except Exception as exc:
            raise explain(exc, target=self.target, app=self.app) from None

    # -- conversations -------------------------------------------------------------

    def conversations(self, app: str | None = None, since: Any = None, source: str | None = None, details: bool = False,
                      max_workers: int = 8, progress: bool | None = None):
        """Stored conversations of an app as a DataFrame (newest first); `since="7d"`,
        `source="LIVE"`; `details=True` also fetches each one into a `transcript` column."""
        from .explore.conversations import list_conversations

        return list_conversations(self, self.resolve_app(app), since=since, source=source, details=details,
                                  max_workers=max_workers, progress=progress)

    def conversation(self, name: str):
        """One conversation (full name, or an id in the default app) as a Transcript."""
        from .explore.conversations import get_conversation

        if not parse_conversation(name):
            name = agent_service_client().conversation_path(**parse_app(self.resolve_app(None)), conversation=name)
        return get_conversation(self, name)

    # -- tools -------------------------------------------------------------------

    def tools_of(self, app: str | None = None) -> dict[str, Any]:
        """The app's Tool protos by resource name and by display name, fetched once per app."""
        app = self.resolve_app(app)
        cache = self._tool_cache
        if app not in cache:
            try:
                tools = list(self.agents.list_tools(parent=app))
            except Exception as exc:
                raise explain(exc, target=self.target, app=app) from None
            index: dict[str, Any] = {}
            for tool in tools:
                index[tool.name] = tool
                index.setdefault(tool.name.rsplit("/", 1)[-1], tool)
                if tool.display_name:
                    index.setdefault(tool.display_name, tool)
            cache[app] = index
        return cache[app]

    def tool_name(self, app: str, name: str) -> str:
        """A tool's resource name from its display name, id or resource name."""
        if name.startswith("projects/"):
            return name
        try:
            tool = self.tools_of(app).get(name)
        except CesError:
            tool = None
        if tool is not None:
            return tool.name
        parts = parse_app(app)
        return agent_service_client().tool_path(**parts, tool=name) if parts else f"{app}/tools/{name}"

    def tool_schema(self, app: str, call_tool: str) -> dict:
        """{"parameters": ..., "response": ..., "description": ...} for a client function, as plain dicts
        (empty when the tool or its schemas are unknown)."""
        try:
            tool = self.tools_of(app).get(call_tool) or self.tools_of(app).get(call_tool.rsplit("/", 1)[-1])
        except CesError:
            return {}
        return client_function_schema(tool)

    # -- sessions ----------------------------------------------------------------

    def session(self, app: str | None = None, session_id: str | None = None, **config: Any):
        """A new conversation (or a stored one, given its id). `config` takes any SessionConfig field."""
        return Session(self, self.resolve_app(app), session_id=session_id, **config)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "emulator" if self.emulator else "CES"
        return f"<ces_nb.Client {kind} at {self.target}, app {self.app or '(none)'}>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import client_html

        return {"text/plain": repr(self), "text/html": client_html(self)}


def connect(
    app: str | None = None,
    *,
    emulator: bool | None = None,
    endpoint: str | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
    start: bool = True,
) -> Client:
    """Connect to CES or to an emulator.

    connect()                                  the local emulator (started if nothing listens
                                               at $CES_NB_EMULATOR, default 127.0.0.1:50551)
    connect(emulator=True)                     the same
    connect("projects/p/locations/l/apps/a")   real CES with Application Default Credentials,
                                               at the location's regional endpoint
    connect(endpoint="host:port")              any emulator, over plaintext gRPC
    """
    import grpc

    if endpoint:
        channel = grpc.insecure_channel(endpoint, options=_channel_options())
        return Client(target=endpoint, emulator=True, app=app or "", channel=channel)
    if app and not emulator:
        parts = parse_app(app)
        if not parts:
            raise ValueError(f"{app!r} is not an app name; use 'projects/PROJECT/locations/LOCATION/apps/APP'")
        target = api_endpoint or regional_endpoint(parts["location"])
        if credentials is None:
            credentials = _default_credentials()
        return Client(target=target, emulator=False, app=app, credentials=credentials, api_endpoint=target)
    address = default_address()
    if start:
        ensure_emulator(address)
    channel = grpc.insecure_channel(address, options=_channel_options())
    client = Client(target=address, emulator=True, channel=channel)
    if app:
        client.app = client.resolve_app(app)
    return client


def _channel_options() -> list:
    return [("grpc.max_receive_message_length", 32 * 1024 * 1024), ("grpc.max_send_message_length", 32 * 1024 * 1024)]


def _default_credentials():
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as exc:
        raise CesError(
            "no Application Default Credentials: run `gcloud auth application-default login`, "
            "or use the emulator with ces_nb.connect(emulator=True)"
        ) from exc
    return credentials
