"""CES toolsets (``toolsets/<name>/<name>.json|yaml``) as the tools they offer.

* ``openApiToolset``: one tool per operation of the OpenAPI schema (YAML or JSON, inlined
  from ``toolsets/<name>/open_api_toolset/open_api_schema.yaml``). A tool's id is the
  operation's ``operationId``; its input schema is the operation's parameters (path, query,
  header, cookie) plus the properties of its JSON ``requestBody``, with local ``$ref``s
  resolved. Parameters marked ``x-ces-session-context`` are filled by CES, not by the
  model, so they are left out of the schema.
* ``mcpToolset``: the tools the export holds for it, its ``toolOverrides`` (a pinned
  tool's ``snapshot`` carries its description and input schema). The emulator makes no
  network calls, so it cannot list the server's other tools.

Offline, a toolset tool answers from the toolset's fake code (``toolFakeConfig``, run with
``useToolFakes`` on the session or ``enableFakeMode``) or, through ExecuteTool, from a
``mock_config``; otherwise its call answers with an error saying why.

In a conversation a toolset tool is named ``<toolset>_<toolId>`` (the name CES python code
calls it by, ``tools.<toolset>_<toolId>``): examples play it back under that display name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from google.cloud import ces_v1
from google.protobuf import json_format

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ENV_VAR = "$env_var"


@dataclass
class ToolsetOperation:
    """One tool of a toolset."""

    toolset: str  # the toolset's displayName
    tool_id: str  # operationId, or the MCP tool's name
    description: str = ""
    parameters: dict = field(default_factory=dict)  # JSON schema of the input (an object)
    method: str = ""  # OpenAPI only: GET, POST...
    path: str = ""
    session_context: dict[str, str] = field(default_factory=dict)  # param -> variable CES fills in

    @property
    def display_name(self) -> str:
        return f"{self.toolset}_{self.tool_id}"


class ToolsetError(ValueError):
    """A toolset's schema cannot be read; the message says why."""


def toolset_kind(toolset: ces_v1.Toolset) -> str:
    return ces_v1.Toolset.pb(toolset).WhichOneof("toolset_type") or ""


def operations(toolset: ces_v1.Toolset) -> tuple[list[ToolsetOperation], list[str]]:
    """The toolset's tools, and notes on what of it is left out or approximated."""
    kind = toolset_kind(toolset)
    if kind == "open_api_toolset":
        return openapi_operations(toolset.display_name, toolset.open_api_toolset.open_api_schema)
    if kind == "mcp_toolset":
        return mcp_operations(toolset)
    return [], [f"{kind or 'an unknown toolset type'} lists its tools only from Google Cloud; it has no tools offline"]


def parse_openapi(text: str) -> dict:
    text = (text or "").strip()
    if not text:
        raise ToolsetError("openApiSchema is empty")
    try:
        spec = json.loads(text) if text.startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ToolsetError(f"openApiSchema is not valid YAML or JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("paths"), dict):
        raise ToolsetError("openApiSchema has no `paths` mapping; is it an OpenAPI 3 document?")
    return spec


def openapi_operations(toolset: str, schema_text: str) -> tuple[list[ToolsetOperation], list[str]]:
    try:
        spec = parse_openapi(schema_text)
    except ToolsetError as exc:
        return [], [str(exc)]
    notes: list[str] = []
    if ENV_VAR in str(spec.get("servers", "")):
        notes.append("its server url is still `$env_var` (no environment.json value for it); calls make no network requests anyway")
    ops: list[ToolsetOperation] = []
    seen: set[str] = set()
    for path, item in spec["paths"].items():
        if not isinstance(item, dict):
            continue
        shared = item.get("parameters") or []
        for method in HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            op_id = op.get("operationId")
            if not op_id:
                notes.append(f"{method.upper()} {path} has no operationId; CES makes no tool of it")
                continue
            if op_id in seen:
                notes.append(f"operationId {op_id!r} appears twice; the second ({method.upper()} {path}) is left out")
                continue
            seen.add(op_id)
            properties: dict[str, Any] = {}
            required: list[str] = []
            context: dict[str, str] = {}
            for param in [*shared, *(op.get("parameters") or [])]:
                param = _resolve(spec, param)
                if not isinstance(param, dict) or "name" not in param:
                    continue
                if param.get("x-ces-session-context"):
                    context[param["name"]] = str(param["x-ces-session-context"])
                    continue
                prop = dict(_resolve(spec, param.get("schema") or {"type": "string"}))
                if param.get("description"):
                    prop.setdefault("description", param["description"])
                properties[param["name"]] = prop
                if param.get("required") or param.get("in") == "path":
                    required.append(param["name"])
            body = _resolve(spec, op.get("requestBody") or {})
            content = (body.get("content") or {}) if isinstance(body, dict) else {}
            media = content.get("application/json") or next(iter(content.values()), None)
            if isinstance(media, dict) and media.get("schema"):
                body_schema = _resolve(spec, media["schema"])
                if isinstance(body_schema, dict) and body_schema.get("properties"):
                    properties.update(body_schema["properties"])
                    required.extend(r for r in body_schema.get("required", []) if r not in required)
                else:
                    properties["requestBody"] = body_schema
                    if body.get("required"):
                        required.append("requestBody")
            parameters = {"type": "object", "properties": properties}
            if required:
                parameters["required"] = required
            ops.append(ToolsetOperation(
                toolset=toolset, tool_id=op_id,
                description=op.get("description") or op.get("summary") or f"{method.upper()} {path}",
                parameters=parameters, method=method.upper(), path=path, session_context=context,
            ))
            if context:
                notes.append(f"{op_id}: parameter {', '.join(sorted(context))} is filled from session variables by CES "
                             "(x-ces-session-context), so the model does not see it; fake code gets only the model's args")
    if not ops:
        notes.append("its OpenAPI schema defines no operation with an operationId; it offers no tools")
    return ops, notes


def _resolve(spec: dict, node: Any, depth: int = 0) -> Any:
    """Local `$ref`s (#/components/...) replaced by what they point at, recursively."""
    if depth > 32:
        return {}
    if isinstance(node, list):
        return [_resolve(spec, n, depth + 1) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        target: Any = spec
        if ref.startswith("#/"):
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        else:
            target = {}  # a remote $ref: the emulator has no network
        return _resolve(spec, target, depth + 1)
    return {k: _resolve(spec, v, depth + 1) for k, v in node.items()}


def mcp_operations(toolset: ces_v1.Toolset) -> tuple[list[ToolsetOperation], list[str]]:
    mcp = toolset.mcp_toolset
    ops = []
    for override in mcp.tool_overrides:
        name = override.name_override or override.tool
        if not name:
            continue
        snapshot = override.snapshot
        schema_pb = ces_v1.Schema.pb(snapshot.input_schema)
        parameters = ces_schema_to_json(schema_pb) if schema_pb.ByteSize() else {"type": "object", "properties": {}}
        ops.append(ToolsetOperation(
            toolset=toolset.display_name, tool_id=name,
            description=override.description_override or snapshot.description or f"{name} (MCP server {mcp.server_address})",
            parameters=parameters,
        ))
    notes = [f"the MCP server {mcp.server_address or '(no serverAddress)'} is not contacted offline: "
             + (f"its tools are the {len(ops)} the export holds (toolOverrides)" if ops
                else "the export holds none of its tools (toolOverrides), so it offers no tools")]
    return ops, notes


def ces_schema_to_json(schema_pb) -> dict:
    """A ces_v1.Schema (raw pb) as a JSON schema dict (lower-case types)."""
    data = json_format.MessageToDict(schema_pb)

    def fix(node):
        if isinstance(node, dict):
            out = {k: fix(v) for k, v in node.items()}
            if isinstance(out.get("type"), str):
                out["type"] = out["type"].lower()
            return out
        if isinstance(node, list):
            return [fix(n) for n in node]
        return node

    return fix(data)


def json_schema_to_genai(schema: Any):
    """A JSON schema (OpenAPI flavour) as a google.genai Schema, for the model's declaration."""
    from google.genai import types

    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    out = types.Schema(
        type=str(kind).upper() if kind else None,
        description=schema.get("description") or None,
        enum=[str(e) for e in schema["enum"]] if isinstance(schema.get("enum"), list) else None,
        required=list(schema["required"]) if isinstance(schema.get("required"), list) else None,
        nullable=schema.get("nullable") or None,
    )
    if isinstance(schema.get("properties"), dict):
        out.properties = {k: json_schema_to_genai(v) or types.Schema() for k, v in schema["properties"].items()}
        out.type = out.type or "OBJECT"
    if isinstance(schema.get("items"), dict):
        out.items = json_schema_to_genai(schema["items"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out.any_of = [s for s in (json_schema_to_genai(x) for x in schema[key]) if s is not None]
    return out


def substitute_env(data: Any, overrides: Any, where: str, notes: list[str]) -> Any:
    """environment.json values for one toolset or tool: where the export says `$env_var`
    (or leaves a field out), the environment's value for that field is used. An OpenAPI
    schema's `$env_var` (its server url) takes the environment's `openApiToolset.url`."""
    if isinstance(data, dict) and isinstance(overrides, dict):
        out = dict(data)
        for key, value in overrides.items():
            if key == "url" and isinstance(out.get("openApiSchema"), str) and ENV_VAR in out["openApiSchema"]:
                out["openApiSchema"] = out["openApiSchema"].replace(ENV_VAR, str(value))
                notes.append(f"{where}.openApiSchema: `$env_var` replaced by environment.json's url")
                out.setdefault("url", value)
            elif key not in out or out[key] == ENV_VAR:
                out[key] = value
                notes.append(f"{where}.{key}: value from environment.json")
            else:
                out[key] = substitute_env(out[key], value, f"{where}.{key}", notes)
        return out
    if data == ENV_VAR:
        notes.append(f"{where}: value from environment.json")
        return overrides
    return data


# -- transfer rule conditions --------------------------------------------------------------
# A deterministic transfer rule's `expressionCondition` is a CEL-like expression on the
# session state. The emulator evaluates the simple, common subset: variables (dotted names;
# a leading `variables.` / `state.` is dropped), string/number/bool/null literals, == != < <= > >=,
# &&, ||, ! and parentheses. Anything else is reported and the rule is left out.

import re as _re

_TOKEN = _re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()])|(?P<name>[A-Za-z_][\w.]*))""")


def _tokens(text: str) -> list[tuple[str, str]] | None:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return None
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse_condition(text: str):
    """The condition as a small tree, or None when it uses more than the subset above."""
    toks = _tokens(text or "")
    if not toks:
        return None
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else (None, None)

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def parse_or():
        node = parse_and()
        while peek() == ("op", "||"):
            take()
            node = ("or", node, parse_and())
        return node

    def parse_and():
        node = parse_not()
        while peek() == ("op", "&&"):
            take()
            node = ("and", node, parse_not())
        return node

    def parse_not():
        if peek() == ("op", "!"):
            take()
            return ("not", parse_not())
        left = parse_operand()
        if peek()[0] == "op" and peek()[1] in ("==", "!=", "<", "<=", ">", ">="):
            op = take()[1]
            return ("cmp", op, left, parse_operand())
        return left

    def parse_operand():
        kind, value = take() if pos < len(toks) else (None, None)
        if kind == "op" and value == "(":
            node = parse_or()
            if take() != ("op", ")"):
                raise ValueError
            return node
        if kind == "num":
            return ("lit", float(value) if "." in value else int(value))
        if kind == "str":
            return ("lit", bytes(value[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "name":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            name = value.split(".", 1)[1] if value.split(".", 1)[0] in ("variables", "state") and "." in value else value
            return ("var", name)
        raise ValueError

    try:
        tree = parse_or()
    except (ValueError, IndexError):
        return None
    return tree if pos == len(toks) else None


def eval_condition(tree, state: dict) -> bool:
    def value(node):
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "var":
            current: Any = state
            for part in node[1].split("."):
                current = current.get(part) if isinstance(current, dict) else None
            return current
        if kind == "not":
            return not truthy(node[1])
        if kind == "and":
            return truthy(node[1]) and truthy(node[2])
        if kind == "or":
            return truthy(node[1]) or truthy(node[2])
        op, a, b = node[1], value(node[2]), value(node[3])
        try:
            return {"==": a == b, "!=": a != b}[op] if op in ("==", "!=") else \
                {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        except TypeError:
            return False

    def truthy(node):
        return bool(value(node))

    return truthy(tree)


def transfer_rules_plugin(app, agent_names: dict[str, str]):
    """An ADK plugin that honours the app's deterministic transfer rules whose expression the
    emulator evaluates: before an agent's model call, a rule whose condition holds on the
    session variables hands over (PARENT_TO_CHILD: the rule's agent to its child;
    CHILD_TO_PARENT: the child back to it), as CES does, without asking the model. Each
    hand-over happens at most once per turn, so two rules can't bounce forever. None when
    the app has no such rule."""
    from collections import OrderedDict

    from google.adk.models.llm_response import LlmResponse
    from google.adk.plugins.base_plugin import BasePlugin
    from google.genai import types

    rules: dict[str, list[tuple[str, Any]]] = {}  # ADK agent name -> [(ADK target name, condition)]
    for parent in app.agents.values():
        for rule in parent.transfer_rules:
            pb = ces_v1.TransferRule.pb(rule)
            if pb.WhichOneof("rule_type") != "deterministic_transfer" or \
                    pb.deterministic_transfer.WhichOneof("condition_type") != "expression_condition":
                continue
            tree = parse_condition(rule.deterministic_transfer.expression_condition.expression)
            child = rule.child_agent.rsplit("/", 1)[-1]
            child = next((d for d in app.agents if child in (d, _slug(d))), None)
            if tree is None or child is None:
                continue
            down = rule.direction != ces_v1.TransferRule.Direction.CHILD_TO_PARENT
            source, target = (parent.display_name, child) if down else (child, parent.display_name)
            rules.setdefault(agent_names[source], []).append((agent_names[target], tree))
    if not rules:
        return None

    class TransferRules(BasePlugin):
        def __init__(self):
            super().__init__(name="ces_transfer_rules")
            self.fired: OrderedDict[tuple[str, str, str], None] = OrderedDict()

        async def before_model_callback(self, *, callback_context, llm_request):
            state = {k: v for k, v in callback_context.state.to_dict().items() if not k.startswith("_")}
            for target, tree in rules.get(callback_context.agent_name, []):
                key = (callback_context.invocation_id, callback_context.agent_name, target)
                if key in self.fired or not eval_condition(tree, state):
                    continue
                self.fired[key] = None
                while len(self.fired) > 4096:
                    self.fired.popitem(last=False)
                call = types.FunctionCall(name="transfer_to_agent", args={"agent_name": target})
                return LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))
            return None

    return TransferRules()


def _slug(text: str) -> str:
    return _re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "app"
