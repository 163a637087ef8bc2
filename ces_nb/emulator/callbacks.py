"""CES callbacks on ADK: an agent's before/after agent, model and tool callbacks, and its
guardrails, as the ADK callbacks of its LlmAgent.

Each CES callback's code runs in the python tool sandbox (python_runner) with CES's names
(`before_model_callback(callback_context, llm_request)`, ...) and globals (`Part`,
`Content`, `LlmResponse`...; see ces_python). Arguments cross as genai-shaped dicts and
come back as ADK/genai objects; what the code writes to `callback_context.state` is
applied to the ADK session state. As the CES docs say: callbacks of a kind run in their
declared order, and the first that returns something (an overriding Content, LlmResponse
or tool result) ends the run of that kind; `disabled` ones never run; an after-model
callback sees partial (streamed) responses only with `proactiveExecutionEnabled`.

Every run is a `ces.callback` span (a `Callback` span in the root span, with `agent`,
`stage`, `name`...); guardrails make `ces.guardrail` spans (see guardrails.py).

A callback that raises does not fail the turn: the error and its traceback (naming the
export's file and line) go to the emulator's log and to the span's `error` and
`traceback`, and the callback counts as having returned None.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from google.adk.models.llm_response import LlmResponse
from google.cloud import ces_v1
from google.genai import types

from . import ces_python
from .agent_tools import PythonFunctionTool, apply_state_delta, build_tool, runner_call
from .code_context import code_filename, dump, session_context
from .playback import TRANSFER_TOOL, adk_name
from .tracing import tracer

if TYPE_CHECKING:
    from .export import LoadedApp
    from .guardrails import AgentGuardrails
    from .python_runner import PythonToolRunner

log = logging.getLogger("ces_nb.emulator")

KINDS = (
    "before_agent_callback", "after_agent_callback",
    "before_model_callback", "after_model_callback",
    "before_tool_callback", "after_tool_callback",
)
CALLBACK_SPAN = "ces.callback"


# -- conversions ---------------------------------------------------------------------------

def to_content(d: dict | None, names: "Names") -> types.Content | None:
    if not d:
        return None
    parts = [names.part(p) for p in d.get("parts") or []]
    return types.Content(role=d.get("role") or "model", parts=[p for p in parts if p is not None])


def to_llm_response(d: dict, names: "Names") -> LlmResponse:
    content = d.get("content") or {"parts": []}
    payloads = []
    parts = []
    for p in content.get("parts") or []:
        blob = p.get("inline_data")
        if blob and blob.get("mime_type") == "application/json" and not p.get("text"):
            payloads.append(_json_of(blob))
            continue
        part = names.part(p)
        if part is not None:
            parts.append(part)
    response = LlmResponse(content=types.Content(role="model", parts=parts), partial=d.get("partial"),
                           turn_complete=d.get("turn_complete"))
    if payloads:
        response.custom_metadata = {"ces_payloads": payloads}
    return response


def _json_of(blob: dict) -> Any:
    import base64

    raw = blob.get("data") or ""
    try:
        return json.loads(base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4)))
    except ValueError:
        return {"data": raw}


class Names:
    """CES display names <-> ADK names, for what callbacks return."""

    def __init__(self, agent_names: dict[str, str], tools: dict):
        self.agent_names = agent_names  # display -> ADK
        self.tools = tools  # display -> CesTool (the runtime's, filled as agents are built)

    def part(self, d: dict) -> types.Part | None:
        d = {k: v for k, v in d.items() if k != "partial"}
        call = d.get("function_call")
        if call:
            name = call.get("name", "")
            args = dict(call.get("args") or {})
            if name == TRANSFER_TOOL:
                target = str(args.get("agent_name", ""))
                args["agent_name"] = self.agent_names.get(target, adk_name(target))
            elif name != "end_session":
                tool = self.tools.get(name)
                name = tool.name if tool is not None else adk_name(name)
            d["function_call"] = {**call, "name": name, "args": args}
        try:
            return types.Part.model_validate_json(json.dumps(d))
        except ValueError as exc:
            log.warning("a callback returned a part the emulator cannot use (%s): %s", exc, d)
            return None


def response_content(ctx) -> dict:
    """The agent's response in this invocation so far (after_agent_callback's `response`)."""
    invocation = ctx._invocation_context  # noqa: SLF001
    parts = []
    for event in invocation.session.events:
        if event.invocation_id == ctx.invocation_id and event.author == ctx.agent_name and event.content:
            parts.extend(p for p in event.content.parts or [] if p.text and not p.thought)
    return dump(types.Content(role="model", parts=parts)) or {"role": "model", "parts": []}


def request_dict(llm_request) -> dict:
    instruction = llm_request.config.system_instruction if llm_request.config else None
    if isinstance(instruction, types.Content):
        instruction = "".join(p.text or "" for p in instruction.parts or [])
    return {
        "contents": [dump(c) for c in llm_request.contents or []],
        "system_instruction": instruction or "",
        "model": llm_request.model,
        "tools": sorted(getattr(llm_request, "tools_dict", {}) or {}),
    }


# -- running code ----------------------------------------------------------------------------

class CodeRunner:
    """Runs one piece of callback code (a CES Callback, or a guardrail's) with a span."""

    def __init__(self, runtime: "CallbackHost", agent: str, kind: str, callback: ces_v1.Callback, filename: str, label: str):
        self.host = runtime
        self.agent = agent
        self.kind = kind
        self.callback = callback
        self.code = callback.python_code
        self.filename = filename
        self.label = label

    async def run(self, ctx, args: dict, span_name: str = CALLBACK_SPAN, attributes: dict | None = None) -> tuple[Any, dict]:
        """(the decoded return value, the worker's reply), the state delta applied to ctx.state."""
        attrs = {"agent": self.agent, "stage": self.kind, "name": self.label, "file": self.filename, **(attributes or {})}
        with tracer().start_as_current_span(span_name, attributes=attrs) as span:
            context = session_context(ctx, self.host.app)
            reply = await runner_call(
                self.host.runner, self.code, self.kind, args, None, filename=self.filename, context=context, callback=self.kind,
                on_tool_call=self.host.tool_caller(),
            )
            apply_state_delta(ctx.state, reply.get("state_delta"))
            if "error" in reply:
                span.set_attribute("error", reply["error"])
                if reply.get("traceback"):
                    span.set_attribute("traceback", reply["traceback"])
                log.error("agent %r: %s %s failed: %s\n%s", self.agent, self.kind, self.label, reply["error"], reply.get("traceback", ""))
                return None, reply
            value = reply.get("result")
            span.set_attribute("returned", _returned(value))
            return value, reply


def _returned(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, dict) and "__ces__" in value:
        return value["__ces__"]
    return type(value).__name__


class CallbackHost:
    """What callback code needs from the runtime: the app, the runner, names, tools."""

    def __init__(self, app: "LoadedApp", runner: "PythonToolRunner", names: Names, tools: dict):
        self.app = app
        self.runner = runner
        self.names = names
        self.tools = tools  # display name -> CesTool (the runtime's)

    def tool_caller(self):
        """`tools.<name>()` from callback code: the app's python tools, as tools call them."""
        async def call(name: str, args: dict, state: dict) -> dict:
            tool = next((t for d, t in self.tools.items() if name in (d, t.name)), None)
            if tool is None:
                display = next((d for d, t in self.app.tools.items() if name in (d, adk_name(d), t.python_function.name)), None)
                tool = build_tool(self.app, display, self.runner, {}) if display else None
            if tool is None:
                return {"error": f"tools.{name}(): the app has no tool named {name!r}"}
            if isinstance(tool, PythonFunctionTool):
                return await tool.peer_caller(0)(tool.display_name, args, state)
            return {"result": await tool.execute(dict(args), None)}

        return call


class AgentCallbacks:
    """The ADK callbacks of one agent: its CES callbacks and guardrails."""

    def __init__(self, host: CallbackHost, agent: ces_v1.Agent, guardrails: "AgentGuardrails | None"):
        self.host = host
        self.agent = agent.display_name
        self.guardrails = guardrails
        self.by_kind: dict[str, list[CodeRunner]] = {}
        folder = adk_name(agent.display_name)
        for kind in KINDS:
            runners = []
            for i, cb in enumerate(getattr(agent, kind + "s")):
                if cb.disabled or not cb.python_code.strip():
                    continue
                fallback = f"agents/{folder}/{kind}s/{i}.py"
                label = cb.description or f"{kind}s[{i}]"
                runner = CodeRunner(host, self.agent, kind, cb, code_filename(host.app, cb.python_code, fallback), label)
                runners.append(runner)
            if runners:
                self.by_kind[kind] = runners

    @staticmethod
    def wanted(agent: ces_v1.Agent) -> bool:
        return any(getattr(agent, k + "s") for k in KINDS)

    def adk_callbacks(self, fill_variables) -> dict:
        """LlmAgent keyword arguments: only the stages something runs at."""
        g = self.guardrails
        out: dict = {}
        if "before_agent_callback" in self.by_kind or (g and g.at("before_agent_callback")):
            out["before_agent_callback"] = self.before_agent
        if "after_agent_callback" in self.by_kind or (g and g.at("after_agent_callback")):
            out["after_agent_callback"] = self.after_agent
        if "before_model_callback" in self.by_kind or (g and g.at("before_model_callback")):
            out["before_model_callback"] = self.before_model
        out["after_model_callback"] = ([fill_variables, self.after_model]
                                       if "after_model_callback" in self.by_kind or (g and g.at("after_model_callback"))
                                       else fill_variables)
        if "before_tool_callback" in self.by_kind:
            out["before_tool_callback"] = self.before_tool
        if "after_tool_callback" in self.by_kind:
            out["after_tool_callback"] = self.after_tool
        return out

    async def _chain(self, kind: str, ctx, args: dict):
        """Runs the callbacks of a kind in order; the first non-None return wins."""
        for runner in self.by_kind.get(kind, ()):
            value, reply = await runner.run(ctx, args)
            mutated = reply.get("mutated") or {}
            for key in ("llm_request", "input", "tool_response", "llm_response"):
                if key in mutated and key in args:
                    args[key] = mutated[key]
            if value is not None:
                return value
        return None

    # ADK calls these by keyword.
    async def before_agent(self, callback_context):
        if self.guardrails:
            blocked = await self.guardrails.check_code("before_agent_callback", callback_context, {})
            if blocked is not None:
                return blocked.content()
        value = await self._chain("before_agent_callback", callback_context, {})
        return to_content(_unwrap(value, "Content"), self.host.names) if value is not None else None

    async def after_agent(self, callback_context):
        args = {"response": response_content(callback_context)}
        if self.guardrails:
            blocked = await self.guardrails.check_code("after_agent_callback", callback_context, args)
            if blocked is not None:
                return blocked.content()
        value = await self._chain("after_agent_callback", callback_context, args)
        return to_content(_unwrap(value, "Content"), self.host.names) if value is not None else None

    async def before_model(self, callback_context, llm_request):
        if self.guardrails:
            blocked = await self.guardrails.check_input(callback_context)
            if blocked is None:
                blocked = await self.guardrails.check_code("before_model_callback", callback_context,
                                                           {"llm_request": request_dict(llm_request)})
            if blocked is not None:
                return blocked.llm_response(self.host.names)
        if "before_model_callback" not in self.by_kind:
            return None
        original = request_dict(llm_request)
        args = {"llm_request": json.loads(json.dumps(original))}
        value = await self._chain("before_model_callback", callback_context, args)
        # The worker sends back what the code left, in ces_python's shape: compare like with like.
        if args["llm_request"] != ces_python.LlmRequest.from_dict(original).to_dict():
            _apply_request(llm_request, original, args["llm_request"], self.host.names)
        return self._model_value(value)

    async def after_model(self, callback_context, llm_response):
        if llm_response.partial and self.guardrails and self.guardrails.checks_output():
            # As on CES, a guarded agent response waits for its check: no streamed text goes
            # out before the whole answer passes (or is replaced).
            return LlmResponse(content=types.Content(role="model", parts=[]), partial=True)
        if llm_response.partial and not self._proactive():
            return None
        replaced = None
        runners = self.by_kind.get("after_model_callback", ())
        if runners:
            original = dump_response(llm_response)
            args = {"llm_response": json.loads(json.dumps(original))}
            for runner in runners:
                if llm_response.partial and not runner.callback.proactive_execution_enabled:
                    continue
                value, reply = await runner.run(callback_context, args)
                if "llm_response" in (reply.get("mutated") or {}):
                    args["llm_response"] = reply["mutated"]["llm_response"]
                if value is not None:
                    replaced = self._model_value(value)
                    break
            if replaced is None and args["llm_response"] != ces_python.LlmResponse.from_dict(original).to_dict():
                replaced = to_llm_response(args["llm_response"], self.host.names)
        if self.guardrails and not llm_response.partial:
            final = replaced or llm_response
            blocked = await self.guardrails.check_output(callback_context, final)
            if blocked is None:
                blocked = await self.guardrails.check_code("after_model_callback", callback_context,
                                                           {"llm_response": dump_response(final)})
            if blocked is not None:
                return blocked.llm_response(self.host.names)
        return replaced

    def _proactive(self) -> bool:
        return any(r.callback.proactive_execution_enabled for r in self.by_kind.get("after_model_callback", ()))

    def _model_value(self, value):
        if value is None:
            return None
        if isinstance(value, dict) and value.get("__ces__") == "LlmResponse":
            return to_llm_response(value["value"], self.host.names)
        if isinstance(value, dict) and value.get("__ces__") == "Content":
            return to_llm_response({"content": value["value"]}, self.host.names)
        log.warning("agent %r: a model callback returned %s, not an LlmResponse; ignored", self.agent, type(value).__name__)
        return None

    async def before_tool(self, tool, args, tool_context):
        values = {"tool": _tool_dict(tool), "input": dict(args)}
        value = await self._chain("before_tool_callback", tool_context, values)
        if values["input"] != dict(args):  # the code changed the call's arguments in place
            args.clear()
            args.update(values["input"])
        return _tool_value(value)

    async def after_tool(self, tool, args, tool_context, tool_response):
        values = {"tool": _tool_dict(tool), "input": dict(args),
                  "tool_response": tool_response if isinstance(tool_response, dict) else {"result": tool_response}}
        original = json.loads(json.dumps(values["tool_response"], default=str))
        value = await self._chain("after_tool_callback", tool_context, values)
        if value is None and values["tool_response"] != original:
            return values["tool_response"]
        return _tool_value(value)


def _tool_dict(tool) -> dict:
    return {"name": getattr(tool, "display_name", None) or tool.name, "description": tool.description or ""}


def _tool_value(value):
    if value is None:
        return None
    if isinstance(value, dict) and "__ces__" not in value:
        return value
    return {"result": value}


def _unwrap(value, tag: str):
    if isinstance(value, dict) and value.get("__ces__") in (tag, "LlmResponse"):
        inner = value["value"]
        return inner.get("content") if value["__ces__"] == "LlmResponse" else inner
    if isinstance(value, str):
        return {"role": "model", "parts": [{"text": value}]}
    return None


def dump_response(llm_response: LlmResponse) -> dict:
    out: dict = {"content": dump(llm_response.content) or {"role": "model", "parts": []}}
    if llm_response.partial is not None:
        out["partial"] = llm_response.partial
    if llm_response.turn_complete is not None:
        out["turn_complete"] = llm_response.turn_complete
    return out


def _apply_request(llm_request, original: dict, changed: dict, names: Names) -> None:
    """What a before_model_callback changed in llm_request (contents, system instruction)."""
    normal = ces_python.LlmRequest.from_dict(original).to_dict()
    if changed.get("contents") != normal.get("contents"):
        llm_request.contents = [c for c in (to_content(d, names) for d in changed.get("contents") or []) if c is not None]
    if changed.get("system_instruction") != original.get("system_instruction") and llm_request.config is not None:
        llm_request.config.system_instruction = changed.get("system_instruction") or None
