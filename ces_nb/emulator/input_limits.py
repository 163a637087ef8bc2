"""How large a turn's inputs and a tool's args may be, what a refusal says, and the refusal of
an oversized request from its wire bytes, before it is parsed.

Parsing is what a large request costs: 2 MiB of variables is a map of 20 000 entries to build,
then to measure (upb measures a message by encoding it), about 20 ms of the event loop that
every other session on this worker waits for, only to refuse it. A request larger than the
smallest limit is first read as a skeleton instead: the same messages with every nested message
left as raw bytes, so an input's size is the length of its bytes (protobuf's own parser, on
descriptors derived from the official ones; nothing is decoded by hand). An input past its
limit is refused there; the rest are parsed as usual and checked again (runtime._check_size),
so what is accepted and what a refusal says are the same either way.
"""

from __future__ import annotations

import functools

from google.cloud import ces_v1
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .errors import EmulatorError

# Largest single input accepted; larger gets INVALID_ARGUMENT. Bytes (image, blob) may be large.
MAX_INPUT_BYTES = 8 * 1024 * 1024
# Text is read by a model: CES documents 15 000 input tokens for a whole turn, so text past
# 64 Ki characters (about 16 000 tokens) could never run there. Fragments count together.
MAX_TEXT_CHARS = 64 * 1024
# Structured inputs (variables, tool responses) become session state and stored events,
# copied and serialized with the session on the event loop: 256 KiB costs about 25 ms a turn
# (benchmarks/isolation.py), where 8 MiB held every other session for most of a second.
MAX_STRUCT_BYTES = 256 * 1024
# Requests no larger than this can't hold an input past any byte limit: not read twice.
SMALLEST_BYTE_LIMIT = MAX_STRUCT_BYTES


def byte_size(n: int) -> str:
    """8 MiB, 256 KiB, 1.5 MiB: a size as a limit message says it."""
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def text_length_error(where: str, kind: str, chars: int) -> EmulatorError | None:
    if chars <= MAX_TEXT_CHARS:
        return None
    return EmulatorError.invalid_argument(
        f"{where}.{kind} is {chars} characters; a turn takes at most {MAX_TEXT_CHARS} "
        f"(CES reads at most 15 000 input tokens a turn): send a shorter message"
    )


def input_size_error(where: str, kind: str, size: int) -> EmulatorError | None:
    """The refusal of a non-text input of `size` bytes, or None when it fits."""
    limit = MAX_STRUCT_BYTES if kind in ("variables", "tool_responses") else MAX_INPUT_BYTES
    if size <= limit:
        return None
    return EmulatorError.invalid_argument(
        f"{where} is {byte_size(size)}; the emulator takes at most {byte_size(limit)} of {kind} per input: "
        f"send a smaller {kind}"
    )


def args_size_error(size: int) -> EmulatorError | None:
    if size <= MAX_STRUCT_BYTES:
        return None
    return EmulatorError.invalid_argument(
        f"args are {byte_size(size)}; a tool takes at most {byte_size(MAX_STRUCT_BYTES)} of args: send smaller args"
    )


def tool_variables_size_error(size: int) -> EmulatorError | None:
    if size <= MAX_STRUCT_BYTES:
        return None
    return EmulatorError.invalid_argument(
        f"variables are {byte_size(size)}; a tool takes at most {byte_size(MAX_STRUCT_BYTES)} of variables: send fewer"
    )


# -- the skeleton check, on wire bytes ---------------------------------------------------------

_FieldType = descriptor_pb2.FieldDescriptorProto


@functools.lru_cache(maxsize=None)
def _skeleton(message_type):
    """A message class with `message_type`'s field numbers, names and oneofs, where each message
    field is raw bytes and each enum an int32: parsing it copies bytes and builds nothing."""
    proto = descriptor_pb2.DescriptorProto()
    message_type.pb().DESCRIPTOR.CopyToProto(proto)
    proto.ClearField("nested_type")
    proto.ClearField("enum_type")
    proto.ClearField("options")
    for field in proto.field:
        field.ClearField("options")
        if field.type in (_FieldType.TYPE_MESSAGE, _FieldType.TYPE_GROUP):
            field.type = _FieldType.TYPE_BYTES
            field.ClearField("type_name")
        elif field.type == _FieldType.TYPE_ENUM:
            field.type = _FieldType.TYPE_INT32
            field.ClearField("type_name")
    file = descriptor_pb2.FileDescriptorProto(name=f"ces_nb_skeleton/{proto.name}.proto", package="ces_nb_skeleton",
                                              syntax="proto3")
    file.message_type.add().CopyFrom(proto)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ces_nb_skeleton.{proto.name}"))


def _input_refusal(where: str, raw: bytes) -> EmulatorError | None:
    """The refusal of one SessionInput, from its bytes `raw`."""
    if len(raw) <= SMALLEST_BYTE_LIMIT:
        return None
    item = _skeleton(ces_v1.SessionInput).FromString(raw)
    kind = item.WhichOneof("input_type")
    if kind in ("text", "dtmf"):
        return text_length_error(where, kind, len(getattr(item, kind)))
    return input_size_error(where, kind, len(raw)) if kind is not None else None


def _run_session_refusal(data: bytes) -> EmulatorError | None:
    request = _skeleton(ces_v1.RunSessionRequest).FromString(data)
    return next(filter(None, (_input_refusal(f"inputs[{i}]", raw) for i, raw in enumerate(request.inputs))), None)


def _bidi_refusal(data: bytes) -> EmulatorError | None:
    """A BidiRunSession message's realtime_input is one turn's one input, as the runtime names it."""
    message = _skeleton(ces_v1.BidiSessionClientMessage).FromString(data)
    return _input_refusal("inputs[0]", message.realtime_input) if message.WhichOneof("message_type") == "realtime_input" else None


def _execute_tool_refusal(data: bytes) -> EmulatorError | None:
    return args_size_error(len(_skeleton(ces_v1.ExecuteToolRequest).FromString(data).args))


_REFUSALS = {
    ces_v1.RunSessionRequest: _run_session_refusal,
    ces_v1.BidiSessionClientMessage: _bidi_refusal,
    ces_v1.ExecuteToolRequest: _execute_tool_refusal,
}


def early_refusal(request_type, data: bytes) -> EmulatorError | None:
    """The refusal of request bytes `data` whose input (or args) is past its limit, found without
    parsing it; None when none is (or when the bytes don't parse: the real parser says why)."""
    refusal = _REFUSALS.get(request_type)
    if refusal is None or len(data) <= SMALLEST_BYTE_LIMIT:
        return None
    try:
        return refusal(data)
    except Exception:  # DecodeError and the like: the full parse reports it
        return None
