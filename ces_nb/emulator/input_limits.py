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

# Fields framed at most per request: the framing runs in Python, so millions of tiny fields
# (unknown ones, say) would hold the loop for seconds; past this many, the full parse (upb, in C)
# decides. A real request has a few per input.
MAX_FIELDS_FRAMED = 4096


class _TooManyFields(Exception):
    pass


class _Framing:
    """One request's framing: each field's number, wire type and where its payload lies, by the
    wire format (protobuf's own varint reader); nothing is copied or decoded. Bytes that do not
    frame raise (IndexError, ValueError): the full parse then says why."""

    def __init__(self) -> None:
        self.left = MAX_FIELDS_FRAMED

    def fields(self, data: memoryview) -> list[tuple[int, int, int, int]]:
        """(number, wire type, payload start, payload end) of every field of one message, in order."""
        out = []
        pos, size = 0, len(data)
        while pos < size:
            self.left -= 1
            if self.left < 0:
                raise _TooManyFields
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
            if end > size or tag >> 3 == 0:
                raise ValueError("truncated, or field number 0")
            out.append((tag >> 3, wire, pos, end))
            pos = end
        return out


@functools.lru_cache(maxsize=None)
def _number(message_type, field: str) -> int:
    return message_type.pb().DESCRIPTOR.fields_by_name[field].number


@functools.lru_cache(maxsize=None)
def _oneof_numbers(message_type, oneof: str) -> dict[int, str]:
    return {f.number: f.name for f in message_type.pb().DESCRIPTOR.oneofs_by_name[oneof].fields}


def _oneof(fields, numbers: dict[int, str], data: memoryview) -> tuple[str | None, memoryview | None, int]:
    """The oneof member set (the last one, as a parser reads it), its payload, and how many times
    a member of the oneof occurs."""
    kind, value, count = None, None, 0
    for number, _wire, start, end in fields:
        if number in numbers:
            kind, value, count = numbers[number], data[start:end], count + 1
    return kind, value, count


# An input the parsed request's checks could refuse for something else first (nothing set, blank
# text), or whose bytes a parser reads otherwise than as one member (two members, or one twice:
# merged, or replaced): the early check stops there, so a refusal says what the parsed check would.
_UNJUDGED = object()


def _input_refusal(where: str, raw: memoryview, framing: _Framing):
    """The refusal of one SessionInput, from its bytes `raw`: an EmulatorError, None (within its
    limits), or _UNJUDGED. Texts are measured whatever their size (a text is counted in
    characters, not bytes); other inputs only when their bytes could pass a limit."""
    fields = framing.fields(raw)
    kind, value, count = _oneof(fields, _oneof_numbers(ces_v1.SessionInput, "input_type"), raw)
    if kind is None or count > 1:
        return _UNJUDGED
    if kind in ("text", "dtmf"):
        text = str(value, "utf-8")  # bad UTF-8 raises: the full parse says so
        if kind == "text" and not text.strip() and not _will_continue(fields, raw):
            return _UNJUDGED
        return text_length_error(where, kind, len(text))
    return input_size_error(where, kind, len(raw)) if len(raw) > SMALLEST_BYTE_LIMIT else None


def _will_continue(fields, raw: memoryview) -> bool:
    number, value = _number(ces_v1.SessionInput, "will_continue"), False
    for field, wire, start, _end in fields:
        if field == number and wire == 0:
            value = bool(_DecodeVarint(raw, start)[0])  # the last one, as a parser reads it
    return value


def _run_session_refusal(data: memoryview) -> EmulatorError | None:
    framing = _Framing()
    inputs = _number(ces_v1.RunSessionRequest, "inputs")
    raws = [data[start:end] for number, _wire, start, end in framing.fields(data) if number == inputs]
    for i, raw in enumerate(raws):
        verdict = _input_refusal(f"inputs[{i}]", raw, framing)
        if verdict is _UNJUDGED:
            return None
        if verdict is not None:
            return verdict
    return None


def _bidi_refusal(data: memoryview) -> EmulatorError | None:
    """A BidiRunSession message's realtime_input is one turn's one input, as the runtime names it."""
    framing = _Framing()
    kind, value, count = _oneof(framing.fields(data), _oneof_numbers(ces_v1.BidiSessionClientMessage, "message_type"), data)
    if kind != "realtime_input" or count > 1:
        return None
    verdict = _input_refusal("inputs[0]", value, framing)
    return None if verdict is _UNJUDGED else verdict


def _execute_tool_refusal(data: memoryview) -> EmulatorError | None:
    number = _number(ces_v1.ExecuteToolRequest, "args")
    args = [(start, end) for field, _wire, start, end in _Framing().fields(data) if field == number]
    if len(args) != 1:  # none, or twice: a parser merges them, and the parsed check measures that
        return None
    start, end = args[0]
    return args_size_error(end - start)


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
    except Exception:  # bytes that do not frame, bad UTF-8, too many fields: the full parse reports it
        return None
