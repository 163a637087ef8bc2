"""CES tools as ADK tools: one adapter per tool kind the emulator runs offline.

| CES tool            | ADK behaviour                                                    |
|---------------------|------------------------------------------------------------------|
| clientFunction      | long-running: the turn pauses and emits tool_calls               |
| pythonFunction      | runs the export's code in a sandboxed worker with a timeout      |
| dataStoreTool       | bm25 search over the app's documents; the reply carries citations|
| googleSearchTool    | the same search, offline; the reply carries search suggestions   |
| widgetTool          | answers with the widget's payload (type, uiConfig, the call's data)|
| toolset tools       | OpenAPI operations / MCP tools: fake code, else an error (no network)|
| end_session         | ends the turn; the runtime emits end_session                     |
| customize_response  | echoes its args                                                  |
| anything else       | answers {"error": ...}: not supported offline                    |

With `use_tool_fakes` on the session (or `toolFakeConfig.enableFakeMode` on the
tool), a tool with a fake code block runs that code instead.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import Any

from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext
from google.cloud import ces_v1
from google.genai import types

from .code_context import code_filename, session_context
from .documents import DocumentIndex
from .export import LoadedApp
from .playback import adk_name
from .python_runner import PythonToolRunner
from .schemas import python_function_declaration, to_genai_schema
from .toolsets import ToolsetOperation, json_schema_to_genai

# Session-state key (not a CES variable: the underscore hides it from the
# variables the client sees) that turns tool fakes on for the session.
USE_TOOL_FAKES_KEY = "_ces_use_tool_fakes"

END_SESSION_DECLARATION = types.FunctionDeclaration(
    name="end_session",
    description="Ends the session. Set session_escalated when handing over to a human.",
    parameters=types.Schema(
        type="OBJECT",
        properties={
            "reason": types.Schema(type="STRING"),
            "session_escalated": types.Schema(type="BOOLEAN"),
        },
    ),
)


class CesTool(BaseTool):
    """Shared by every adapter: the CES definition and fake-mode handling."""

    kind = ""

    def __init__(self, tool: ces_v1.Tool | None, name: str, description: str, runner: PythonToolRunner, long_running: bool = False):
        super().__init__(name=adk_name(name), description=description, is_long_running=long_running)
        self.ces_tool = tool
        self.display_name = name
        self.runner = runner

    def fake_code(self, use_tool_fakes: bool) -> str | None:
        """The fake code that answers instead of the tool: with the session's use_tool_fakes,
        or toolFakeConfig.enableFakeMode."""
        if self.ces_tool is None:
            return None
        fake = self.ces_tool.tool_fake_config
        code = fake.code_block.python_code if fake else ""
        if code and (fake.enable_fake_mode or use_tool_fakes):
            return code
        return None

    async def run_async(self, *, args: dict[str, Any], tool_context: ToolContext) -> Any:
        code = self.fake_code(bool(tool_context.state.get(USE_TOOL_FAKES_KEY)))
        if code is not None:
            answer = await run_fake(self.runner, code, self.name, args, self._timeout(),
                                    context=session_context(tool_context, self.app), filename=self.fake_filename())
            if answer is not None:
                return answer
        return await self.execute(args, tool_context)

    # Set by build_tool: the app, for `tools.<name>()` and for naming code files in tracebacks.
    app: LoadedApp | None = None

    def fake_filename(self) -> str:
        folder = f"toolsets/{self.ces_tool.display_name}" if isinstance(self.ces_tool, ces_v1.Toolset) else f"tools/{self.display_name}"
        code = self.ces_tool.tool_fake_config.code_block.python_code if self.ces_tool is not None else ""
        return code_filename(self.app, code, f"{folder}/tool_fake_config/code_block/python_code.py")

    async def execute(self, args: dict[str, Any], tool_context: ToolContext | None) -> Any:
        raise NotImplementedError

    def _timeout(self) -> float | None:
        """The export's own timeout, if it sets one: the runner caps it at its maximum."""
        if self.ces_tool is not None and self.ces_tool.timeout:
            return self.ces_tool.timeout.total_seconds() or None
        return None


async def run_fake(runner: PythonToolRunner, code: str, name: str, args: dict, timeout, *,
                   context: dict | None = None, filename: str | None = None) -> Any:
    """Runs a tool's fake code. CES fake code defines `fake_tool_call(tool, input, callback_context)`,
    called as a before_tool_callback is (the same arguments, the session as its CallbackContext);
    returning None there means "use the real tool" (None here). Other code: its first function,
    with the args. An error is the answer, as a tool's is."""
    functions = _functions(code)
    if "fake_tool_call" in functions:
        reply = await runner_call(runner, code, "fake_tool_call", {"tool": {"name": name}, "input": dict(args)}, timeout,
                                  callback="before_tool_callback", context=context or {"state": {}}, filename=filename)
    else:
        reply = await runner_call(runner, code, functions[0] if functions else name, args, timeout,
                                  context=context or {"state": {}}, filename=filename)
    if "error" not in reply and reply.get("result") is None:
        return None
    return tool_answer(reply)


def _functions(code: str) -> list[str]:
    import ast

    try:
        return [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        return []


class ClientFunctionTool(CesTool):
    kind = "client_function"

    def _get_declaration(self) -> types.FunctionDeclaration:
        # Built once: ADK asks on every model call, and a nested schema costs ~0.7 ms to convert.
        if getattr(self, "_declaration", None) is None:
            fn = self.ces_tool.client_function
            self._declaration = types.FunctionDeclaration(name=self.name, description=fn.description,
                                                          parameters=to_genai_schema(fn.parameters))
        return self._declaration.model_copy()

    async def execute(self, args, tool_context):
        # None tells ADK the answer comes later: the client's tool_responses.
        return None


class PythonFunctionTool(CesTool):
    kind = "python_function"

    def _get_declaration(self) -> types.FunctionDeclaration:
        # Parsed once: ADK asks for the declaration on every model call.
        if getattr(self, "_declaration", None) is None:
            fn = self.ces_tool.python_function
            self._declaration = python_function_declaration(fn.name or self.display_name, fn.python_code, fn.description)
            self._declaration.name = self.name
        return self._declaration.model_copy()  # shallow: the schema inside is never changed

    # Set by build_tool: the documents `tools.<name>()` may search.
    indexes: dict | None = None

    async def execute(self, args, tool_context):
        """Runs the code with CES's globals: `context` (the session's state, written back
        as this call's state delta) and `tools` (the app's other tools, run here)."""
        fn = self.ces_tool.python_function
        context = session_context(tool_context, self.app) if tool_context is not None else {"state": {}}
        if tool_context is not None:
            context["function_call_id"] = tool_context.function_call_id or ""
        reply = await self.run_code(args, context, self.peer_caller(0, bool(tool_context and tool_context.state.get(USE_TOOL_FAKES_KEY))))
        if tool_context is not None:
            apply_state_delta(tool_context.state, reply.get("state_delta"))
        return tool_answer(reply)

    async def execute_with_variables(self, args: dict[str, Any], variables: dict) -> tuple[dict, dict]:
        """ExecuteTool: the call with the request's variables as its session state. The answer,
        and the variables as the call left them (ExecuteToolResponse.variables)."""
        reply = await self.run_code(args, {"state": dict(variables)}, self.peer_caller(0))
        after = dict(variables)
        for key, value in (reply.get("state_delta") or {}).items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        return tool_answer(reply), after

    async def run_code(self, args: dict, context: dict, on_tool_call, nested: bool = False) -> dict:
        """The worker's reply to this tool's code called with `args`, under CES's globals."""
        fn = self.ces_tool.python_function
        return await runner_call(
            self.runner, fn.python_code, fn.name or self.display_name, args, self._timeout(),
            filename=code_filename(self.app, fn.python_code, f"tools/{self.display_name}/python_function/python_code.py"),
            context=context, on_tool_call=on_tool_call, nested=nested,
        )

    def peer_caller(self, depth: int, use_tool_fakes: bool = False):
        """Answers the code's `tools.<name>(args)`: the app's tool of that name (a toolset's
        tool by its CES name, `<toolset>_<toolId>`), run with the caller's state; a python
        tool runs nested, within the caller's deadline; a toolset's tool answers from its fake
        code as it would in the session."""
        async def call(name: str, args: dict, state: dict) -> dict:
            if depth >= MAX_TOOL_DEPTH:
                return {"error": f"tools.{name}(): calls nest deeper than {MAX_TOOL_DEPTH}"}
            peer = self._peer(name)
            if peer is None:
                known = ", ".join(sorted([*self.app.tools, *self.app.toolset_operations])) if self.app else ""
                return {"error": f"tools.{name}(): the app has no tool named {name!r}; tools: {known}"}
            if isinstance(peer, PythonFunctionTool):
                reply = await peer.run_code(args, {"state": state}, peer.peer_caller(depth + 1, use_tool_fakes), nested=True)
                return {"result": tool_answer(reply), "state_delta": reply.get("state_delta") or {}}
            if isinstance(peer, ClientFunctionTool):
                return {"error": f"tools.{name}(): {name} is a client function; only the client can answer it"}
            code = peer.fake_code(use_tool_fakes)
            if code is not None:
                answer = await run_fake(self.runner, code, peer.name, dict(args), peer._timeout(),
                                        context={"state": state}, filename=peer.fake_filename())
                if answer is not None:
                    return {"result": answer}
            return {"result": await peer.execute(dict(args), None)}

        return call

    def _peer(self, name: str) -> "CesTool | None":
        if self.app is None:
            return None
        peers = self.__dict__.setdefault("_peers", {})
        if name not in peers:
            display = next((d for d, t in self.app.tools.items() if name in (d, adk_name(d), t.python_function.name)), None)
            display = display or next((d for d in self.app.toolset_operations if name in (d, adk_name(d))), None)
            peers[name] = build_tool(self.app, display, self.runner, self.indexes if self.indexes is not None else {}) if display else None
        return peers[name]


MAX_TOOL_DEPTH = 8


async def runner_call(runner, code: str, function: str, args: dict, timeout, **options) -> dict:
    """runner.call, or for a stand-in runner that only has run() (the emulator's warm-up
    runs no code): its answer for a tool, None for a callback."""
    call = getattr(runner, "call", None)
    if call is None:
        if options.get("callback"):
            return {"result": None}
        return {"result": await runner.run(code, function, args, timeout)}
    return await call(code, function, args, timeout, **options)


def apply_state_delta(state, delta: dict | None) -> None:
    """A call's state delta onto ADK state (a key the code removed becomes None: ADK state
    has no delete)."""
    for key, value in (delta or {}).items():
        state[key] = value


def tool_answer(reply: dict) -> dict:
    """The tool response the model sees: the result, or {"error", "traceback"}."""
    if "error" in reply:
        return {k: reply[k] for k in ("error", "traceback") if k in reply}
    result = reply.get("result")
    return result if isinstance(result, dict) else {"result": result}


class SearchTool(CesTool):
    """dataStoreTool and googleSearchTool: both search the app's own documents offline."""

    def __init__(self, tool, name, description, runner, index: DocumentIndex, kind: str):
        super().__init__(tool, name, description, runner)
        self.index = index
        self.kind = kind

    def _get_declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(
            name=self.name,
            description=self.description,
            parameters=types.Schema(type="OBJECT", properties={"query": types.Schema(type="STRING")}, required=["query"]),
        )

    async def execute(self, args, tool_context):
        query = str(args.get("query", ""))
        hits = self.index.search(query)
        results = [{"title": h.title, "uri": h.uri, "snippet": h.snippet} for h in hits]
        # The best hit's fields at the top level, so agent text can say {title}.
        best = results[0] if results else {"title": "", "uri": "", "snippet": "nothing found"}
        return {"query": query, **best, "results": results}


class EndSessionTool(CesTool):
    kind = "end_session"

    def _get_declaration(self) -> types.FunctionDeclaration:
        return END_SESSION_DECLARATION

    async def execute(self, args, tool_context):
        if tool_context is not None:
            # Nothing follows end_session: don't ask the model to speak again.
            tool_context.actions.skip_summarization = True
        return {"ended": True}


class CustomizeResponseTool(CesTool):
    kind = "customize_response"

    def _get_declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(
            name=self.name,
            description=self.description,
            parameters=types.Schema(type="OBJECT", properties={"text": types.Schema(type="STRING")}),
        )

    async def execute(self, args, tool_context):
        return dict(args)


class ToolsetTool(CesTool):
    """One tool of an OpenAPI or MCP toolset. Offline it answers from the toolset's fake code
    (`useToolFakes` / `toolFakeConfig.enableFakeMode`); otherwise with an error saying why."""

    kind = "toolset_tool"

    def __init__(self, toolset: ces_v1.Toolset, operation: ToolsetOperation, runner: PythonToolRunner):
        super().__init__(toolset, operation.display_name, operation.description, runner)
        self.operation = operation

    def _get_declaration(self) -> types.FunctionDeclaration:
        if getattr(self, "_declaration", None) is None:
            self._declaration = types.FunctionDeclaration(
                name=self.name, description=self.description, parameters=json_schema_to_genai(self.operation.parameters))
        return self._declaration.model_copy()

    async def execute(self, args, tool_context):
        return {"error": toolset_offline_error(self.ces_tool, self.operation)}


def toolset_offline_error(toolset: ces_v1.Toolset, operation: ToolsetOperation) -> str:
    kind = ces_v1.Toolset.pb(toolset).WhichOneof("toolset_type") or "toolset"
    target = (f"{operation.method} {operation.path}" if operation.method
              else f"the MCP server {toolset.mcp_toolset.server_address}" if kind == "mcp_toolset" else kind)
    has_fake = bool(toolset.tool_fake_config.code_block.python_code)
    fix = ("run the session with use_tool_fakes (or set toolFakeConfig.enableFakeMode) to use the toolset's fake code"
           if has_fake else "add fake code to the toolset (toolFakeConfig.codeBlock.pythonCode) and run with use_tool_fakes")
    return (f"{operation.display_name}: the offline ces_nb emulator makes no network calls, so it cannot call "
            f"{target}; {fix}, or answer it with a mock_config through ExecuteTool")


class WidgetTool(CesTool):
    """widgetTool: the widget goes back to the client; offline its answer is the widget's payload."""

    kind = "widget_tool"

    def _get_declaration(self) -> types.FunctionDeclaration:
        widget = self.ces_tool.widget_tool
        return types.FunctionDeclaration(name=self.name, description=self.description,
                                         parameters=to_genai_schema(widget.parameters))

    async def execute(self, args, tool_context):
        from google.protobuf import json_format

        widget = self.ces_tool.widget_tool
        pb = ces_v1.WidgetTool.pb(widget)
        payload: dict[str, Any] = {
            "widget": widget.name or self.display_name,
            "widgetType": ces_v1.WidgetTool.WidgetType(widget.widget_type).name,
            "data": dict(args),
        }
        if pb.HasField("ui_config"):
            payload["uiConfig"] = json_format.MessageToDict(pb.ui_config)
        if widget.text_response_config.static_text:
            payload["text"] = widget.text_response_config.static_text
        return payload


class UnsupportedTool(CesTool):
    kind = "unsupported"

    def _get_declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(name=self.name, description=self.description)

    async def execute(self, args, tool_context):
        tool_type = ces_v1.Tool.pb(self.ces_tool).WhichOneof("tool_type") if self.ces_tool else "unknown"
        return {"error": f"{self.display_name}: {tool_type} tools are not supported by the offline ces_nb emulator"}


def build_tool(app: LoadedApp, display_name: str, runner: PythonToolRunner, indexes: dict[str, DocumentIndex]) -> CesTool:
    """The adapter for one tool reference of an agent (reserved names included)."""
    if display_name == "end_session":
        return EndSessionTool(None, "end_session", END_SESSION_DECLARATION.description, runner)
    if display_name == "customize_response":
        return CustomizeResponseTool(None, "customize_response", "Sends the given text as the response.", runner)
    operation = getattr(app, "toolset_operations", {}).get(display_name)
    if operation is not None and display_name not in app.tools:
        toolset_tool = ToolsetTool(app.toolsets[operation.toolset], operation, runner)
        toolset_tool.app = app
        return toolset_tool
    tool = app.tools[display_name]
    kind = app.tool_kind(tool)
    if kind == "client_function":
        return ClientFunctionTool(tool, display_name, tool.client_function.description, runner, long_running=True)
    if kind == "python_function":
        python_tool = PythonFunctionTool(tool, display_name, tool.python_function.description, runner)
        python_tool.app, python_tool.indexes = app, indexes
        return python_tool
    if kind in ("data_store_tool", "google_search_tool"):
        description = (tool.data_store_tool.description if kind == "data_store_tool" else tool.google_search_tool.description)
        index = indexes.setdefault(display_name, DocumentIndex(app.documents.get(display_name, [])))
        return SearchTool(tool, display_name, description or f"Searches {display_name}.", runner, index, kind)
    if kind == "system_tool" and tool.system_tool.name == "end_session":
        return EndSessionTool(tool, display_name, tool.system_tool.description, runner)
    if kind == "widget_tool":
        return WidgetTool(tool, display_name, tool.widget_tool.description or f"Shows the {display_name} widget.", runner)
    return UnsupportedTool(tool, display_name, f"{display_name} (not available offline)", runner)


def search_suggestions_html(query: str) -> str:
    """A search chip like the ones Google search grounding returns (escaped)."""
    href = "https://www.google.com/search?q=" + urllib.parse.quote_plus(query)
    return (
        '<div class="container"><div class="carousel">'
        f'<a class="chip" href="{html.escape(href)}">{html.escape(query)}</a>'
        "</div></div>"
    )
