"""MockConfig matching: which mocked response answers a tool call.

An `expected_args_pattern` matches when every key it names matches the call's
args: strings are regular expressions (full match), objects match
recursively, other values must be equal. Keys the pattern leaves out are free.
"""

from __future__ import annotations

import re
from typing import Any

from google.cloud import ces_v1
from google.protobuf import json_format


def args_match(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and args_match(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, str):
        try:
            return re.fullmatch(pattern, str(value)) is not None
        except re.error:
            return pattern == str(value)
    if isinstance(pattern, list):
        return isinstance(value, list) and len(pattern) == len(value) and all(map(args_match, pattern, value))
    return pattern == value


def find_mock(config: ces_v1.MockConfig, tool_names: set[str], args: dict) -> dict | None:
    """The mock response for a call to a tool known by any of `tool_names`, or None."""
    for mocked in config.mocked_tool_calls:
        target = mocked.tool or mocked.tool_id
        if target.rsplit("/", 1)[-1] not in tool_names and target not in tool_names:
            continue
        pb = ces_v1.MockedToolCall.pb(mocked)
        pattern = json_format.MessageToDict(pb.expected_args_pattern) if pb.HasField("expected_args_pattern") else {}
        if args_match(pattern, args):
            return json_format.MessageToDict(pb.mock_response)
    return None
