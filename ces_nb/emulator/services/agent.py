"""google.cloud.ces.v1.AgentService, the read side: apps, agents, tools, and
conversations from the emulator's own session store."""

from __future__ import annotations

import base64
import datetime as dt
import re

import grpc
from google.cloud import ces_v1
from google.protobuf import empty_pb2, json_format, timestamp_pb2

from .. import names
from ..errors import EmulatorError, quote
from ..export import slugify
from ..registry import AppRegistry
from ..runtime import META_KEY, USER_ID, AppRuntime
from . import unary

SERVICE = "google.cloud.ces.v1.AgentService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_FILTER_TERM = re.compile(r'^\s*start_time\s*(>=|<=|>|<|=)\s*"?([^"\s]+)"?\s*$')


def _page(items: list, page_size: int, page_token: str) -> tuple[list, str]:
    try:
        offset = int(base64.urlsafe_b64decode(page_token.encode()).decode()) if page_token else 0
    except ValueError:
        raise EmulatorError.invalid_argument("page_token is not one this emulator issued; pass next_page_token back unchanged") from None
    if page_size < 0:
        raise EmulatorError.invalid_argument("page_size must be positive (or 0 for the default, 50)")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    page = items[offset: offset + size]
    more = offset + size < len(items)
    return page, base64.urlsafe_b64encode(str(offset + size).encode()).decode() if more else ""


def _timestamp(iso: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(iso)
    return ts


def _parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EmulatorError.invalid_argument(
            f"filter time {quote(text)} is not RFC 3339; write e.g. start_time > \"2026-01-01T00:00:00Z\""
        ) from None


def _time_filter(expression: str):
    """`start_time > "…"` terms joined by AND; returns a predicate on a datetime."""
    if not expression.strip():
        return lambda _t: True
    checks = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        m = _FILTER_TERM.match(term)
        if not m:
            raise EmulatorError.invalid_argument(
                f"filter term {quote(term)} is not supported; the emulator filters on start_time, "
                'e.g. start_time >= "2026-01-01T00:00:00Z" AND start_time < "2026-02-01T00:00:00Z"'
            )
        op, bound = m[1], _parse_time(m[2])
        checks.append((op, bound))
    ops = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "=": lambda a, b: a == b}
    return lambda t: all(ops[op](t, bound) for op, bound in checks)


class AgentService:
    def __init__(self, registry: AppRegistry):
        self.registry = registry

    # -- apps, agents, tools --------------------------------------------------------

    def _app_message(self, runtime: AppRuntime, name: str) -> ces_v1.App:
        app = ces_v1.App(runtime.app.app)
        app.name = name
        app.root_agent = f"{name}/agents/{slugify(app.root_agent)}"
        return app

    async def list_apps(self, request: ces_v1.ListAppsRequest, context) -> ces_v1.ListAppsResponse:
        project, location = names.parse_parent(request.parent)
        apps = [
            self._app_message(rt, f"projects/{project}/locations/{location}/apps/{app_id}")
            for app_id, rt in sorted(self.registry.runtimes.items())
        ]
        page, token = _page(apps, request.page_size, request.page_token)
        return ces_v1.ListAppsResponse(apps=page, next_page_token=token)

    async def get_app(self, request: ces_v1.GetAppRequest, context) -> ces_v1.App:
        name = names.parse("app", request.name)
        return self._app_message(self.registry.runtime(name), request.name)

    def _agent_message(self, name: names.Name, agent: ces_v1.Agent) -> ces_v1.Agent:
        out = ces_v1.Agent(agent)
        out.name = name.child("agents", slugify(agent.display_name))
        out.tools = [name.child("tools", t) for t in agent.tools]
        out.child_agents = [name.child("agents", slugify(c)) for c in agent.child_agents]
        for ref in out.toolsets:
            ref.toolset = name.child("toolsets", ref.toolset)
        for rule in out.transfer_rules:
            if rule.child_agent and "/" not in rule.child_agent:
                rule.child_agent = name.child("agents", slugify(rule.child_agent))
        return out

    def _find(self, pool: dict, ident: str, what: str, app: str):
        for display, item in pool.items():
            if ident in (display, slugify(display)):
                return item
        known = ", ".join(slugify(d) if what == "agent" else d for d in sorted(pool))
        raise EmulatorError.not_found(f"{what} {quote(ident)} is not in app {quote(app)}; {what}s: {known}")

    async def list_agents(self, request: ces_v1.ListAgentsRequest, context) -> ces_v1.ListAgentsResponse:
        name = names.parse("app", request.parent, "parent")
        runtime = self.registry.runtime(name)
        agents = [self._agent_message(name, a) for _d, a in sorted(runtime.app.agents.items())]
        page, token = _page(agents, request.page_size, request.page_token)
        return ces_v1.ListAgentsResponse(agents=page, next_page_token=token)

    async def get_agent(self, request: ces_v1.GetAgentRequest, context) -> ces_v1.Agent:
        name = names.parse("agent", request.name)
        runtime = self.registry.runtime(name)
        return self._agent_message(name, self._find(runtime.app.agents, name.id, "agent", name.app))

    def _tool_message(self, name: names.Name, tool: ces_v1.Tool) -> ces_v1.Tool:
        out = ces_v1.Tool(tool)
        out.name = name.child("tools", tool.display_name)
        return out

    async def list_tools(self, request: ces_v1.ListToolsRequest, context) -> ces_v1.ListToolsResponse:
        name = names.parse("app", request.parent, "parent")
        runtime = self.registry.runtime(name)
        tools = [self._tool_message(name, t) for _d, t in sorted(runtime.app.tools.items())]
        page, token = _page(tools, request.page_size, request.page_token)
        return ces_v1.ListToolsResponse(tools=page, next_page_token=token)

    async def get_tool(self, request: ces_v1.GetToolRequest, context) -> ces_v1.Tool:
        name = names.parse("tool", request.name)
        runtime = self.registry.runtime(name)
        if name.id in SYSTEM_TOOLS and name.id not in runtime.app.tools:
            return self._tool_message(name, system_tool(name.id))
        return self._tool_message(name, self._find(runtime.app.tools, name.id, "tool", name.app))

    # -- toolsets, guardrails, examples ---------------------------------------------

    def _child_listing(self, parent: str, pool: dict, collection: str, request) -> tuple[list, str]:
        name = names.parse("app", parent, "parent")
        runtime = self.registry.runtime(name)
        items = []
        for display, item in sorted(pool(runtime).items()):
            out = type(item)(item)
            out.name = name.child(collection, display)
            items.append(out)
        return _page(items, request.page_size, request.page_token)

    def _child_get(self, request_name: str, pool, collection: str, what: str):
        name = _parse_child(request_name, collection, what)
        runtime = self.registry.runtime(name)
        items = pool(runtime)
        item = next((v for d, v in items.items() if name.id in (d, slugify(d))), None)
        if item is None:
            known = ", ".join(sorted(items)) or "none"
            raise EmulatorError.not_found(f"{what} {quote(name.id)} is not in app {quote(name.app)}; {what}s: {known}")
        out = type(item)(item)
        out.name = name.child(collection, next(d for d, v in items.items() if v is item))
        return out

    async def list_toolsets(self, request: ces_v1.ListToolsetsRequest, context) -> ces_v1.ListToolsetsResponse:
        page, token = self._child_listing(request.parent, lambda rt: rt.app.toolsets, "toolsets", request)
        return ces_v1.ListToolsetsResponse(toolsets=page, next_page_token=token)

    async def get_toolset(self, request: ces_v1.GetToolsetRequest, context) -> ces_v1.Toolset:
        return self._child_get(request.name, lambda rt: rt.app.toolsets, "toolsets", "toolset")

    async def list_guardrails(self, request: ces_v1.ListGuardrailsRequest, context) -> ces_v1.ListGuardrailsResponse:
        page, token = self._child_listing(request.parent, lambda rt: rt.app.guardrails, "guardrails", request)
        return ces_v1.ListGuardrailsResponse(guardrails=page, next_page_token=token)

    async def get_guardrail(self, request: ces_v1.GetGuardrailRequest, context) -> ces_v1.Guardrail:
        return self._child_get(request.name, lambda rt: rt.app.guardrails, "guardrails", "guardrail")

    async def list_examples(self, request: ces_v1.ListExamplesRequest, context) -> ces_v1.ListExamplesResponse:
        page, token = self._child_listing(request.parent, _examples, "examples", request)
        return ces_v1.ListExamplesResponse(examples=page, next_page_token=token)

    async def get_example(self, request: ces_v1.GetExampleRequest, context) -> ces_v1.Example:
        return self._child_get(request.name, _examples, "examples", "example")

    # -- conversations ------------------------------------------------------------

    def _summary(self, name: names.Name, session_id: str, meta: dict) -> ces_v1.Conversation:
        return ces_v1.Conversation(
            name=name.child("conversations", session_id),
            start_time=_timestamp(meta["start_time"]),
            end_time=_timestamp(meta.get("end_time", meta["start_time"])),
            turn_count=int(meta.get("turn_count", 0)),
            input_types=[ces_v1.Conversation.InputType[t] for t in meta.get("input_types", [])],
            entry_agent=name.child("agents", slugify(meta.get("entry_agent", ""))),
            deployment=meta.get("deployment", ""),
            source=ces_v1.Conversation.Source[meta.get("source", "LIVE")],
            channel_type=ces_v1.Conversation.ChannelType[meta.get("channel", "TEXT")],
        )

    async def list_conversations(self, request: ces_v1.ListConversationsRequest, context) -> ces_v1.ListConversationsResponse:
        name = names.parse("app", request.parent, "parent")
        runtime = self.registry.runtime(name)
        keep = _time_filter(request.filter)
        wanted = set(request.sources) | ({request.source} if request.source else set())
        listing = await runtime.session_service.list_sessions(app_name=runtime.app.app_id, user_id=USER_ID)
        rows = []
        for session in listing.sessions:
            meta = session.state.get(META_KEY)
            if not meta or not meta.get("turn_count"):
                continue
            conversation = self._summary(name, session.id, meta)
            if wanted and conversation.source not in wanted:
                continue
            if keep(_parse_time(meta["start_time"])):
                rows.append((meta["start_time"], session.id, conversation))
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)  # newest first
        page, token = _page([r[2] for r in rows], request.page_size, request.page_token)
        return ces_v1.ListConversationsResponse(conversations=page, next_page_token=token)

    async def get_conversation(self, request: ces_v1.GetConversationRequest, context) -> ces_v1.Conversation:
        name = names.parse("conversation", request.name)
        runtime = self.registry.runtime(name)
        session = await runtime.session_service.get_session(app_name=runtime.app.app_id, user_id=USER_ID, session_id=name.id)
        if session is None or META_KEY not in session.state:
            raise EmulatorError.not_found(
                f"conversation {quote(name.id)} is not in app {quote(name.app)}; list them with ListConversations(parent={name.app_name!r})"
            )
        conversation = self._summary(name, session.id, session.state[META_KEY])
        for event in session.events:
            record = (event.custom_metadata or {}).get("ces_turn")
            if not record:
                continue
            turn = _stored_turn(record)
            conversation.turns.append(turn)
            conversation.messages.extend(turn.messages)
        return conversation

    async def delete_conversation(self, request: ces_v1.DeleteConversationRequest, context) -> empty_pb2.Empty:
        await self.get_conversation(ces_v1.GetConversationRequest(name=request.name), context)
        name = names.parse("conversation", request.name)
        runtime = self.registry.runtime(name)
        await runtime.session_service.delete_session(app_name=runtime.app.app_id, user_id=USER_ID, session_id=name.id)
        runtime.forget(name.id)
        return empty_pb2.Empty()

    def handler(self) -> grpc.GenericRpcHandler:
        class _Empty:  # proto-plus style adapter for google.protobuf.Empty
            serialize = staticmethod(lambda m: m.SerializeToString())

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ListApps": unary(self.list_apps, ces_v1.ListAppsRequest, ces_v1.ListAppsResponse),
                "GetApp": unary(self.get_app, ces_v1.GetAppRequest, ces_v1.App),
                "ListAgents": unary(self.list_agents, ces_v1.ListAgentsRequest, ces_v1.ListAgentsResponse),
                "GetAgent": unary(self.get_agent, ces_v1.GetAgentRequest, ces_v1.Agent),
                "ListTools": unary(self.list_tools, ces_v1.ListToolsRequest, ces_v1.ListToolsResponse),
                "GetTool": unary(self.get_tool, ces_v1.GetToolRequest, ces_v1.Tool),
                "ListToolsets": unary(self.list_toolsets, ces_v1.ListToolsetsRequest, ces_v1.ListToolsetsResponse),
                "GetToolset": unary(self.get_toolset, ces_v1.GetToolsetRequest, ces_v1.Toolset),
                "ListGuardrails": unary(self.list_guardrails, ces_v1.ListGuardrailsRequest, ces_v1.ListGuardrailsResponse),
                "GetGuardrail": unary(self.get_guardrail, ces_v1.GetGuardrailRequest, ces_v1.Guardrail),
                "ListExamples": unary(self.list_examples, ces_v1.ListExamplesRequest, ces_v1.ListExamplesResponse),
                "GetExample": unary(self.get_example, ces_v1.GetExampleRequest, ces_v1.Example),
                "ListConversations": unary(self.list_conversations, ces_v1.ListConversationsRequest, ces_v1.ListConversationsResponse),
                "GetConversation": unary(self.get_conversation, ces_v1.GetConversationRequest, ces_v1.Conversation),
                "DeleteConversation": unary(self.delete_conversation, ces_v1.DeleteConversationRequest, _Empty),
            },
        )


SYSTEM_TOOLS = {
    "end_session": "Ends the session. Set session_escalated when handing over to a human.",
}


def system_tool(name: str) -> ces_v1.Tool:
    """A CES system tool (end_session) as GetTool returns it, for an export that lists it by name only."""
    return ces_v1.Tool(display_name=name, system_tool=ces_v1.SystemTool(name=name, description=SYSTEM_TOOLS[name]))


def _examples(runtime: AppRuntime) -> dict[str, ces_v1.Example]:
    return {e.display_name: e for e in runtime.app.examples}


def _parse_child(name: str, collection: str, what: str) -> names.Name:
    m = re.match(r"^(projects/[^/]+/locations/[^/]+/apps/[^/]+)/" + collection + r"/([^/]+)$", name or "")
    if not m:
        got = quote(name) if name else "nothing"
        raise EmulatorError.invalid_argument(
            f"name must look like 'projects/my-project/locations/us/apps/skyway/{collection}/my-{what}'; got {got}")
    app = names.parse("app", m[1])
    return names.Name(app.project, app.location, app.app, m[2])


def _stored_turn(record) -> ces_v1.Conversation.Turn:
    """A turn as the runtime stored it: base64 of the serialized Conversation.Turn. Sessions
    from earlier emulator versions hold its JSON text, or a dict of messages and root_span."""
    if isinstance(record, dict):
        return ces_v1.Conversation.Turn.wrap(json_format.ParseDict(
            {"messages": record.get("messages", []), "rootSpan": record.get("root_span", {})},
            ces_v1.Conversation.Turn.pb()(), ignore_unknown_fields=True))
    if record.lstrip().startswith("{"):
        return ces_v1.Conversation.Turn.wrap(json_format.Parse(record, ces_v1.Conversation.Turn.pb()(), ignore_unknown_fields=True))
    return ces_v1.Conversation.Turn.deserialize(base64.b64decode(record))
