"""Reading protobuf messages (proto-plus or raw) as the JSON-shaped dicts the records read."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message as PbMessage

from ..model import sorted_keys


def raw_pb(message: Any) -> PbMessage:
    """The raw protobuf message under a proto-plus one (or the raw message itself)."""
    return message if isinstance(message, PbMessage) else type(message).pb(message)


def as_dict(message: Any) -> dict:
    """A proto-plus message, a raw protobuf message, or already a dict -> the JSON-shaped dict."""
    if isinstance(message, dict):
        return message
    return sorted_keys(json_format.MessageToDict(raw_pb(message), preserving_proto_field_name=True))


def struct_to_dict(struct: Any) -> dict:
    """A google.protobuf.Struct as a dict with sorted keys, the way MessageToDict reads it,
    without its generic reflection (a turn holds dozens of these)."""
    fields = struct.fields
    return {k: _value_to_py(fields[k]) for k in sorted(fields)}


def _value_to_py(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_py(v) for v in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)
