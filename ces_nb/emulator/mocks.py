"""MockConfig matching: which mocked response answers a tool call.

An `expected_args_pattern` matches when every key it names matches the call's
args: strings are regular expressions (full match), objects match
recursively, other values must be equal. Keys the pattern leaves out are free.

Patterns come from clients, so they run on RE2, in time linear in the input as
on Google's services: `(a|a)+b` can't stall the emulator. A string RE2 can't
parse (a lookbehind, a backreference, a lone bracket) matches itself literally.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from google.cloud import ces_v1
from google.protobuf import json_format


def args_match(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and args_match(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, str):
        compiled = _compile(pattern)
        return pattern == str(value) if compiled is None else compiled.fullmatch(str(value)) is not None
    if isinstance(pattern, list):
        return isinstance(value, list) and len(pattern) == len(value) and all(map(args_match, pattern, value))
    return pattern == value


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is answered, not logged to stderr
_OPTIONS.max_mem = 8 << 20  # RE2's own bound on a pattern's program and DFA


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str):
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error:
        return None


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
