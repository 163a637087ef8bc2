"""How large a turn's inputs and a tool's args may be, what a refusal says, and the refusal of
an oversized request from its wire bytes, before it is parsed.

Parsing is what a large request costs: 2 MiB of variables is a map of 20 000 entries to build,
then to measure (upb measures a message by encoding it), about 20 ms of the event loop that
every other session on this worker waits for, only to refuse it. A request larger than the
smallest limit is first read by its framing instead: each field's number and where its bytes
lie (field numbers from the official descriptors), so an input's size is the length of its
bytes, and nothing is copied (a skeleton message with the nested messages as bytes, read by
protobuf's parser, copied 4 MiB of tool args twice: ~2 ms of the loop). An input past its limit
is refused there; the rest are parsed as usual and checked again (runtime._check_size), so what
is accepted and what a refusal says are the same either way.
"""

from __future__ import annotations

import functools

from google.cloud import ces_v1
from google.protobuf.internal.decoder import _DecodeVarint

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


# -- the check on wire bytes ----------------------------------------------------------------

def _fields(data: memoryview):
    """(field number, payload start, payload end) of each field of one message's wire bytes, in
    order, by the wire format's framing (protobuf's own varint reader); nothing is copied or
    decoded. Bytes that do not frame raise (IndexError, ValueError): the full parse says why."""
    pos, size = 0, len(data)
    while pos < size:
        tag, pos = _DecodeVarint(data, pos)
        wire = tag & 7
        if wire == 0:  # varint
            _value, end = _DecodeVarint(data, pos)
        elif wire == 1:  # fixed64
            end = pos + 8
        elif wire == 2:  # length-delimited: strings, bytes, messages
            length, pos = _DecodeVarint(data, pos)
            end = pos + length
        elif wire == 5:  # fixed32
            end = pos + 4
        else:  # groups (never in these messages) and bad tags
            raise ValueError(f"wire type {wire}")
        if end > size:
            raise ValueError("truncated")
        yield tag >> 3, pos, end
        pos = end


@functools.lru_cache(maxsize=None)
def _number(message_type, field: str) -> int:
    return message_type.pb().DESCRIPTOR.fields_by_name[field].number


@functools.lru_cache(maxsize=None)
def _oneof_numbers(message_type, oneof: str) -> dict[int, str]:
    return {f.number: f.name for f in message_type.pb().DESCRIPTOR.oneofs_by_name[oneof].fields}


def _last(data: memoryview, number: int) -> memoryview | None:
    """The payload of the last occurrence of field `number` (a singular field's value, as a parser
    reads it), or None."""
    found = None
    for field, start, end in _fields(data):
        if field == number:
            found = data[start:end]
    return found


# An input the parsed request's checks could refuse for something else first (nothing set, blank
# text): the early check stops there, so a refusal says what the parsed check would say.
_UNJUDGED = object()


def _input_refusal(where: str, raw: memoryview):
    """The refusal of one SessionInput, from its bytes `raw`: an EmulatorError, None (within its
    limits), or _UNJUDGED. Texts are measured whatever their size (a text is counted in
    characters, not bytes); other inputs only when their bytes could pass a limit."""
    kinds = _oneof_numbers(ces_v1.SessionInput, "input_type")
    kind, value = None, None
    for field, start, end in _fields(raw):
        if field in kinds:  # the last member of the oneof is the one set
            kind, value = kinds[field], raw[start:end]
    if kind is None:
        return _UNJUDGED
    if kind in ("text", "dtmf"):
        text = str(value, "utf-8")  # bad UTF-8 raises: the full parse says so
        if kind == "text" and not text.strip():
            return _UNJUDGED
        return text_length_error(where, kind, len(text))
    return input_size_error(where, kind, len(raw)) if len(raw) > SMALLEST_BYTE_LIMIT else None


def _run_session_refusal(data: memoryview) -> EmulatorError | None:
    inputs = _number(ces_v1.RunSessionRequest, "inputs")
    raws = (data[start:end] for field, start, end in _fields(data) if field == inputs)
    for i, raw in enumerate(raws):
        verdict = _input_refusal(f"inputs[{i}]", raw)
        if verdict is _UNJUDGED:
            return None
        if verdict is not None:
            return verdict
    return None


def _bidi_refusal(data: memoryview) -> EmulatorError | None:
    """A BidiRunSession message's realtime_input is one turn's one input, as the runtime names it."""
    kinds = _oneof_numbers(ces_v1.BidiSessionClientMessage, "message_type")
    kind, value = None, None
    for field, start, end in _fields(data):
        if field in kinds:
            kind, value = kinds[field], data[start:end]
    if kind != "realtime_input":
        return None
    verdict = _input_refusal("inputs[0]", value)
    return None if verdict is _UNJUDGED else verdict


def _execute_tool_refusal(data: memoryview) -> EmulatorError | None:
    args = _last(data, _number(ces_v1.ExecuteToolRequest, "args"))
    return args_size_error(len(args)) if args is not None else None


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
        return refusal(memoryview(data))
    except Exception:  # bytes that do not frame, bad UTF-8: the full parse reports it
        return None
