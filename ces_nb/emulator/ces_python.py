"""The CES Python runtime's classes and globals, as pythonFunction tools and callbacks see them.

Loaded by python_worker (by path, standard library only) and never imported into the
emulator's own code paths but for its dict shapes: objects cross the worker's pipe as JSON
dicts in the shape of google.genai's types (`model_dump(mode="json", exclude_none=True)`),
so the emulator converts them to and from ADK/genai objects (see callbacks.py).

CES's "Python runtime reference" lists these globals: `context` (tools), `tools`, and the
classes `CallbackContext`, `Content`, `Part`, `Blob`, `FunctionCall`, `FunctionResponse`,
`LlmRequest`, `LlmResponse`. Only what the emulator can honour offline is here.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any, Callable

END_SESSION = "end_session"
TRANSFER = "transfer_to_agent"


class Blob:
    """Inlined bytes data."""

    def __init__(self, mime_type: str | None = None, data: bytes | None = None, display_name: str | None = None, raw_data: bytes | None = None):
        self.mime_type = mime_type
        self.display_name = display_name
        self.raw_data = raw_data if raw_data is not None else data
        self._transcript: str | None = None

    @property
    def data(self) -> bytes | None:
        return self.raw_data

    @data.setter
    def data(self, value: bytes | None) -> None:
        self.raw_data = value

    def transcript(self) -> str | None:
        return self._transcript

    @classmethod
    def from_json(cls, data: str) -> "Blob":
        return cls(mime_type="application/json", raw_data=data.encode("utf-8") if isinstance(data, str) else data)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.mime_type:
            out["mime_type"] = self.mime_type
        if self.display_name:
            out["display_name"] = self.display_name
        if self.raw_data is not None:
            out["data"] = base64.b64encode(self.raw_data).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Blob":
        raw = d.get("data")
        if isinstance(raw, str):  # genai writes url-safe base64; accept either alphabet
            raw = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
        return cls(mime_type=d.get("mime_type"), display_name=d.get("display_name"), raw_data=raw)

    def __repr__(self) -> str:
        return f"Blob(mime_type={self.mime_type!r}, {len(self.raw_data or b'')} bytes)"


class FunctionCall:
    def __init__(self, name: str = "", args: dict | None = None, id: str | None = None):  # noqa: A002 - genai's name
        self.name = name
        self.args = dict(args or {})
        self.id = id

    def to_dict(self) -> dict:
        out = {"name": self.name, "args": self.args}
        if self.id:
            out["id"] = self.id
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FunctionCall":
        return cls(name=d.get("name", ""), args=d.get("args") or {}, id=d.get("id"))

    def __repr__(self) -> str:
        return f"FunctionCall(name={self.name!r}, args={self.args!r})"


class FunctionResponse:
    def __init__(self, name: str = "", response: dict | None = None, id: str | None = None):  # noqa: A002
        self.name = name
        self.response = dict(response or {})
        self.id = id

    def to_dict(self) -> dict:
        out = {"name": self.name, "response": self.response}
        if self.id:
            out["id"] = self.id
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FunctionResponse":
        return cls(name=d.get("name", ""), response=d.get("response") or {}, id=d.get("id"))

    def __repr__(self) -> str:
        return f"FunctionResponse(name={self.name!r}, response={self.response!r})"


class Part:
    """One part of a Content: text, a function call or response, or inline data."""

    def __init__(self, text: str | None = None, function_call: FunctionCall | None = None,
                 function_response: FunctionResponse | None = None, inline_data: Blob | None = None,
                 thought: bool | None = None, partial: bool | None = None):
        self.text = text
        self.function_call = function_call
        self.function_response = function_response
        self.inline_data = inline_data
        self.thought = thought
        self.partial = partial

    # -- constructors (the runtime reference's class methods) --
    @classmethod
    def from_text(cls, text: str = "", partial: bool | None = None) -> "Part":
        return cls(text=text, partial=partial)

    @classmethod
    def from_function_call(cls, name: str, args: dict | None = None) -> "Part":
        return cls(function_call=FunctionCall(name=name, args=args))

    @classmethod
    def from_function_response(cls, name: str, response: dict | None = None) -> "Part":
        return cls(function_response=FunctionResponse(name=name, response=response))

    @classmethod
    def from_json(cls, data: str) -> "Part":
        """A JSON payload (sent to the client as a SessionOutput payload)."""
        return cls(inline_data=Blob.from_json(data))

    @classmethod
    def from_bytes(cls, data: bytes, mime_type: str) -> "Part":
        return cls(inline_data=Blob(mime_type=mime_type, raw_data=data))

    @classmethod
    def from_end_session(cls, reason: str = "", escalated: bool = False) -> "Part":
        """Ends the session, as the end_session system tool does."""
        return cls(function_call=FunctionCall(name=END_SESSION, args={"reason": reason, "session_escalated": bool(escalated)}))

    @classmethod
    def from_agent_transfer(cls, agent: str) -> "Part":
        return cls(function_call=FunctionCall(name=TRANSFER, args={"agent_name": agent}))

    # -- helpers --
    def text_or_transcript(self) -> str | None:
        if self.text is not None:
            return self.text
        if self.inline_data is not None:
            return self.inline_data.transcript()
        return None

    def has_function_call(self, name: str | None = None) -> bool:
        return self.function_call is not None and (name is None or self.function_call.name == name)

    def has_function_response(self, name: str | None = None) -> bool:
        return self.function_response is not None and (name is None or self.function_response.name == name)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.text is not None:
            out["text"] = self.text
        if self.function_call is not None:
            out["function_call"] = self.function_call.to_dict()
        if self.function_response is not None:
            out["function_response"] = self.function_response.to_dict()
        if self.inline_data is not None:
            out["inline_data"] = self.inline_data.to_dict()
        if self.thought:
            out["thought"] = True
        if self.partial:
            out["partial"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Part":
        return cls(
            text=d.get("text"),
            function_call=FunctionCall.from_dict(d["function_call"]) if d.get("function_call") else None,
            function_response=FunctionResponse.from_dict(d["function_response"]) if d.get("function_response") else None,
            inline_data=Blob.from_dict(d["inline_data"]) if d.get("inline_data") else None,
            thought=d.get("thought"),
            partial=d.get("partial"),
        )

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if v is not None}
        return "Part(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


class Content:
    def __init__(self, parts: list[Part] | None = None, role: str | None = "model"):
        self.parts = list(parts or [])
        self.role = role

    @classmethod
    def from_text(cls, text: str, role: str = "model") -> "Content":
        return cls(parts=[Part.from_text(text)], role=role)

    def text_or_transcript(self) -> str:
        return "".join(t for p in self.parts if (t := p.text_or_transcript()))

    def is_user(self) -> bool:
        return self.role == "user"

    def is_model(self) -> bool:
        return self.role == "model"

    def to_dict(self) -> dict:
        out: dict = {"parts": [p.to_dict() for p in self.parts]}
        if self.role:
            out["role"] = self.role
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> "Content | None":
        if d is None:
            return None
        return cls(parts=[Part.from_dict(p) for p in d.get("parts") or []], role=d.get("role"))

    def __repr__(self) -> str:
        return f"Content(role={self.role!r}, parts={self.parts!r})"


class LlmRequest:
    """What goes to the model: the conversation so far and the system instruction."""

    def __init__(self, contents: list[Content] | None = None, system_instruction: str = "", model: str | None = None, tools: list[str] | None = None):
        self.contents = list(contents or [])
        self.system_instruction = system_instruction
        self.model = model
        self.tools = list(tools or [])

    def to_dict(self) -> dict:
        return {"contents": [c.to_dict() for c in self.contents], "system_instruction": self.system_instruction,
                "model": self.model, "tools": self.tools}

    @classmethod
    def from_dict(cls, d: dict) -> "LlmRequest":
        return cls(contents=[Content.from_dict(c) for c in d.get("contents") or []],
                   system_instruction=d.get("system_instruction") or "", model=d.get("model"), tools=d.get("tools"))


class LlmResponse:
    """What the model answered (or what a callback answers in its place)."""

    def __init__(self, content: Content | None = None, partial: bool | None = None, turn_complete: bool | None = None):
        self.content = content
        self.partial = partial
        self.turn_complete = turn_complete

    @classmethod
    def from_parts(cls, parts: list[Part]) -> "LlmResponse":
        return cls(content=Content(parts=list(parts), role="model"))

    def text_or_transcript(self) -> str:
        return self.content.text_or_transcript() if self.content else ""

    def to_dict(self) -> dict:
        out: dict = {"content": self.content.to_dict() if self.content else None}
        if self.partial is not None:
            out["partial"] = self.partial
        if self.turn_complete is not None:
            out["turn_complete"] = self.turn_complete
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "LlmResponse":
        return cls(content=Content.from_dict(d.get("content")), partial=d.get("partial"), turn_complete=d.get("turn_complete"))


class Event:
    """One event of the session: who spoke (author) and what (content)."""

    def __init__(self, author: str = "", content: Content | None = None, invocation_id: str = ""):
        self.author = author
        self.content = content
        self.invocation_id = invocation_id

    def is_user(self) -> bool:
        return self.author == "user"

    def is_agent(self) -> bool:
        return self.author != "user"

    def parts(self) -> list[Part]:
        return self.content.parts if self.content else []

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        return cls(author=d.get("author", ""), content=Content.from_dict(d.get("content")), invocation_id=d.get("invocation_id", ""))

    def __repr__(self) -> str:
        return f"Event(author={self.author!r}, content={self.content!r})"


class Tool:
    """The tool a before/after tool callback is about."""

    def __init__(self, name: str = "", description: str = ""):
        self.name = name
        self.description = description

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"


class _Context:
    """Shared by CallbackContext and a tool's `context`: the session as of this call."""

    def __init__(self, d: dict):
        self.state: dict = d.get("state") or {}
        # CES variables live in the session state: the same dict under both names.
        self.variables: dict = self.state
        self.agent_name: str = d.get("agent_name", "")
        self.invocation_id: str = d.get("invocation_id", "")
        self.session_id: str = d.get("session_id", "")
        self.events: list[Event] = [Event.from_dict(e) for e in d.get("events") or []]

    @property
    def user_input_text(self) -> str:
        content = getattr(self, "_user_content", None)
        return content.text_or_transcript() if content else ""


class CallbackContext(_Context):
    """The session information available during a callback."""

    def __init__(self, d: dict):
        super().__init__(d)
        self._user_content = Content.from_dict(d.get("user_content"))
        self.user_content: Content | None = self._user_content

    def get_variable(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def set_variable(self, name: str, value: Any) -> None:
        self.state[name] = value


class ToolContext(_Context):
    """`context` in a python tool: user_content is a dict ({"role", "parts": [{"text"}]})."""

    def __init__(self, d: dict):
        super().__init__(d)
        self._user_content = Content.from_dict(d.get("user_content"))
        self.user_content: dict | None = d.get("user_content")
        self.function_call_id: str = d.get("function_call_id", "")


class ToolResult(dict):
    """A tool's answer to `tools.<name>(...)`: a dict, with `.json()` for OpenAPI-style code."""

    def json(self) -> dict:
        return dict(self)


class Tools:
    """`tools.<name>(args)` or `tools.<name>(**args)` runs another tool of the app, through
    the emulator, and answers its response dict."""

    def __init__(self, call: Callable[[str, dict], dict]):
        self._call = call

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def invoke(*args, **kwargs):
            if args:
                if len(args) != 1 or not isinstance(args[0], dict):
                    raise TypeError(f"tools.{name}() takes one dict of arguments, or keyword arguments")
                kwargs = {**args[0], **kwargs}
            return ToolResult(self._call(name, kwargs))

        invoke.__name__ = name
        return invoke


# Callback kind -> (function name, the arguments it is called with, in order).
CALLBACK_ARGS = {
    "before_agent_callback": ("callback_context",),
    "after_agent_callback": ("callback_context", "response"),
    "before_model_callback": ("callback_context", "llm_request"),
    "after_model_callback": ("callback_context", "llm_response"),
    "before_tool_callback": ("tool", "input", "callback_context"),
    "after_tool_callback": ("tool", "input", "callback_context", "tool_response"),
}


def globals_for(context: _Context | None, tools: Tools) -> dict:
    """The names CES puts in a tool's or callback's global namespace."""
    import typing

    return {
        # CES samples annotate with these without importing them.
        "Optional": typing.Optional, "Any": typing.Any, "List": typing.List, "Dict": typing.Dict,
        "context": context,
        "tools": tools,
        "CallbackContext": CallbackContext,
        "Content": Content,
        "Part": Part,
        "Blob": Blob,
        "FunctionCall": FunctionCall,
        "FunctionResponse": FunctionResponse,
        "LlmRequest": LlmRequest,
        "LlmResponse": LlmResponse,
        "Event": Event,
        "Tool": Tool,
    }


def callback_arguments(kind: str, args: dict, context: CallbackContext) -> dict:
    """The callback's arguments as runtime objects, by name."""
    out: dict = {"callback_context": context}
    if "llm_request" in args:
        out["llm_request"] = LlmRequest.from_dict(args["llm_request"])
    if "llm_response" in args:
        out["llm_response"] = LlmResponse.from_dict(args["llm_response"])
    if "response" in args:
        out["response"] = Content.from_dict(args["response"])
    if "tool" in args:
        out["tool"] = Tool(**args["tool"])
    if "input" in args:
        out["input"] = args["input"]
    if "tool_response" in args:
        out["tool_response"] = args["tool_response"]
    return out


def call_with(fn: Callable, kind: str, values: dict) -> Any:
    """Calls fn with the documented arguments of `kind`: by name when fn names them, else in
    the documented order, as many as fn takes."""
    import inspect

    order = CALLBACK_ARGS[kind]
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn(*(values[n] for n in order))
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn(*(values[n] for n in order))
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if names and all(n in values for n in names):
        return fn(**{n: values[n] for n in names})
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(*(values[n] for n in order[: len(positional)]))


def encode_return(value: Any) -> Any:
    """A callback's return value as JSON: runtime objects as tagged dicts."""
    if value is None:
        return None
    if isinstance(value, LlmResponse):
        return {"__ces__": "LlmResponse", "value": value.to_dict()}
    if isinstance(value, Content):
        return {"__ces__": "Content", "value": value.to_dict()}
    if isinstance(value, Part):
        return {"__ces__": "Content", "value": Content(parts=[value]).to_dict()}
    if isinstance(value, ToolResult):
        return dict(value)
    return value


def state_delta(before: dict, after: dict) -> dict:
    """What a call changed in the state (a removed key is set to None)."""
    delta = {k: v for k, v in after.items() if k not in before or before[k] != v}
    delta.update({k: None for k in before if k not in after})
    return delta


def snapshot(state: dict) -> dict:
    try:
        return copy.deepcopy(state)
    except Exception:  # noqa: BLE001 - JSON-born values always copy; be safe anyway
        return json.loads(json.dumps(state, default=str))
