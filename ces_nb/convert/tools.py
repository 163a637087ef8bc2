"""Tools: an AgentService Tool's client-function schemas -> plain dicts (for the forms), and
ToolService.ExecuteTool responses -> ToolResult."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from ..model import Citation, SearchSuggestions, ToolResult, get_field, tool_resource
from .protos import as_dict


def tool_result(response: Any, args: dict, mocked: bool = False) -> ToolResult:
    """An ExecuteToolResponse (proto or dict) for the call made with `args`."""
    d = as_dict(response)
    suggestions = get_field(d, "google_search_suggestions")
    return ToolResult(
        tool=tool_resource(d),
        args=dict(args),
        response=get_field(d, "response") or {},
        citations=[Citation.from_dict(c) for c in get_field(get_field(d, "citations") or {}, "cited_chunks") or []],
        search_suggestions=SearchSuggestions.from_dict(suggestions) if suggestions else None,
        variables=get_field(d, "variables") or {},
        mocked=mocked,
    )


def client_function_schema(tool: Any) -> dict:
    """{"parameters": ..., "response": ..., "description": ...} of a client-function Tool, as plain
    dicts; {} for any other tool (or None)."""
    if tool is None or "client_function" not in tool:
        return {}
    fn = type(tool).pb(tool).client_function
    out = {"description": fn.description}
    for key in ("parameters", "response"):
        if fn.HasField(key):
            out[key] = json_format.MessageToDict(getattr(fn, key), preserving_proto_field_name=True)
    return out
