"""Turn, Output, Span, Transcript: plain records. No session, no widgets, no I/O.

Every source reaches these through the same JSON-shaped dict: ces_nb.convert reads protos
(a live RunSession's SessionOutputs, BidiSessionServerMessages, a stored Conversation), ADK
events and OpenTelemetry spans; a JSON trace found in the wild (camelCase or snake_case)
is read here, by `from_dict`:

    proto --ces_nb.convert--> dict --from_dict--> dataclass

Keys are looked up in both spellings; the user's own data (tool args, payloads,
variables, span attributes) is never renamed. Each kind of output is its own class
(TextOutput, ToolCallsOutput, ...), named by `kind` as the proto field is.

The transcript file format (`Transcript.save`, version 1) is this dict form:

    {"format": "ces_nb.transcript", "version": 1,
     "session": "projects/…/sessions/…", "app": "projects/…/apps/…",
     "audio": {"encoding": "LINEAR16", "sample_rate_hertz": 16000},
     "turns": [{"turn_index": 1, "completed": true, "partial": false, "error": null,
                "inputs":  [SessionInput as JSON, e.g. {"text": "Hi"}],
                "outputs": [SessionOutput as JSON, without diagnostic_info],
                "messages": [Message as JSON], "root_span": Span as JSON,
                "events": [{"recognition_result": …} | {"interruption_signal": …} | …]}]}

Bytes (audio, images, blobs) are base64, as in the proto JSON mapping, so
nothing is lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterable

from .convert.otel import SPAN_KINDS

FORMAT = "ces_nb.transcript"
VERSION = 1

INPUT_KINDS = ("text", "dtmf", "audio", "tool_responses", "image", "blob", "variables", "event")
CHUNK_KINDS = (
    "text", "transcript", "blob", "payload", "image", "tool_call", "tool_response",
    "agent_transfer", "updated_variables", "default_variables",
)

# -- reading dicts in either spelling ---------------------------------------------

_CAMEL = re.compile(r"_([a-z])")


@lru_cache(maxsize=1024)  # field names are few; get_field runs per key per span
def _camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def get_field(d: dict, name: str, default: Any = None) -> Any:
    if name in d:
        return d[name]
    return d.get(_camel(name), default)


def has_field(d: dict, name: str) -> bool:
    return name in d or _camel(name) in d


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    text = str(value)
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- times ---------------------------------------------------------------------------

# The shape protobuf's ToJsonString writes (UTC, 0-9 fraction digits), read without strptime: a
# saved transcript holds two per span. Whole seconds are cached (a turn's spans share a few);
# anything else goes through protobuf.
_RFC3339_SECOND = re.compile(r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):([0-5]\d):([0-5]\d)")
_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
_seconds_at: dict[str, int] = {}


def _digits(text: str, most: int) -> bool:
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _fast_timestamp_ns(text: str) -> int | None:
    seconds = _seconds_at.get(text[:19])
    if seconds is None:
        m = _RFC3339_SECOND.fullmatch(text[:19])
        if m is None:
            return None
        y, mo, d, h, mi, s = map(int, m.groups())
        try:
            days = date(y, mo, d).toordinal() - _EPOCH_ORDINAL
        except ValueError:  # 2025-02-30: let protobuf say so
            return None
        seconds = days * 86400 + h * 3600 + mi * 60 + s
        if len(_seconds_at) > 100_000:
            _seconds_at.clear()
        _seconds_at[text[:19]] = seconds
    tail = text[19:]
    if tail == "Z":
        return seconds * 1_000_000_000
    if tail[:1] == "." and tail[-1:] == "Z" and _digits(tail[1:-1], 9):
        return seconds * 1_000_000_000 + int(tail[1:-1].ljust(9, "0"))
    return None


def _fast_duration_ns(text: str) -> int | None:
    if text[-1:] != "s":
        return None
    whole, dot, frac = text[:-1].partition(".")
    if not _digits(whole, 11) or dot and not _digits(frac, 9):
        return None
    return int(whole) * 1_000_000_000 + (int(frac.ljust(9, "0")) if dot else 0)


def timestamp_ns(value: Any) -> int | None:
    """RFC 3339 text (nanoseconds kept), a datetime, or {seconds, nanos} -> ns since epoch."""
    if value in (None, ""):
        return None
    if type(value) is str:
        fast = _fast_timestamp_ns(value)
        if fast is not None:
            return fast
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    if isinstance(value, dict):
        return int(value.get("seconds", 0)) * 1_000_000_000 + int(value.get("nanos", 0))
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(str(value))
    return ts.ToNanoseconds()


def _duration_ns(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if type(value) is str:
        fast = _fast_duration_ns(value)
        if fast is not None:
            return fast
    if isinstance(value, (int, float)):
        return int(value * 1e9)  # seconds
    if isinstance(value, dict):
        return int(value.get("seconds", 0)) * 1_000_000_000 + int(value.get("nanos", 0))
    if hasattr(value, "total_seconds"):
        return round(value.total_seconds() * 1e9)
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromJsonString(str(value))
    return d.ToNanoseconds()


def _timestamp_json(ns: int | None) -> str | None:
    if ns is None:
        return None
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts.ToJsonString()


def _duration_json(ns: int | None) -> str | None:
    if ns is None:
        return None
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d.ToJsonString()


# -- the model -------------------------------------------------------------------------

@dataclass
class ToolCall:
    id: str
    tool: str
    display_name: str = ""
    args: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What a person calls the tool: its display name, else the last segment of its resource name."""
        return self.display_name or self.tool.rsplit("/", 1)[-1]

    @classmethod
    def from_dict(cls, d: dict) -> "ToolCall":
        return cls(id=get_field(d, "id", ""), tool=tool_resource(d), display_name=get_field(d, "display_name", ""), args=get_field(d, "args") or {})

    def to_dict(self) -> dict:
        return {"id": self.id, "tool": self.tool, "display_name": self.display_name, "args": self.args}


@dataclass
class ToolResponse:
    id: str
    tool: str
    display_name: str = ""
    response: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ToolResponse":
        return cls(id=get_field(d, "id", ""), tool=tool_resource(d), display_name=get_field(d, "display_name", ""), response=get_field(d, "response") or {})

    def to_dict(self) -> dict:
        return {"id": self.id, "tool": self.tool, "display_name": self.display_name, "response": self.response}


def tool_resource(d: dict) -> str:
    if has_field(d, "tool"):
        return get_field(d, "tool") or ""
    toolset = get_field(d, "toolset_tool") or {}
    return f"{get_field(toolset, 'toolset', '')}/tools/{get_field(toolset, 'tool_id', '')}" if toolset else ""


@dataclass
class Citation:
    title: str = ""
    uri: str = ""
    text: str = ""
    requires_attribution: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "Citation":
        return cls(get_field(d, "title", ""), get_field(d, "uri", ""), get_field(d, "text", ""), bool(get_field(d, "requires_attribution", False)))

    def to_dict(self) -> dict:
        return {"title": self.title, "uri": self.uri, "text": self.text, "requires_attribution": self.requires_attribution}


@dataclass
class SearchSuggestions:
    htmls: list[str] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)  # {"query", "uri"}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSuggestions":
        queries = [{"query": get_field(q, "query", ""), "uri": get_field(q, "uri", "")} for q in get_field(d, "web_search_queries") or []]
        return cls(list(get_field(d, "htmls") or []), queries)

    def to_dict(self) -> dict:
        return {"htmls": self.htmls, "web_search_queries": self.queries}


@dataclass
class Output:
    """One SessionOutput. Each kind of output is its own class (TextOutput, ToolCallsOutput, …);
    `kind` names it as the proto field does ("text", "tool_calls", …)."""

    value: Any
    turn_index: int = 0
    turn_completed: bool = False
    kind: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is Output:  # the old Output(kind, value) would silently make a wrong record
            raise TypeError("Output is the base of TextOutput, ToolCallsOutput, …: make one of those, "
                            "or Output.of(kind, value, turn_index)")
        return super().__new__(cls)

    @classmethod
    def of(cls, kind: str, value: Any, turn_index: int = 0, turn_completed: bool = False) -> "Output":
        """The output of a kind named as the proto field is ("text", "tool_calls", …)."""
        return OUTPUT_TYPES[kind](value, turn_index, turn_completed)

    @classmethod
    def from_dict(cls, d: dict) -> "Output | None":
        kind = next((k for k in OUTPUT_KINDS if has_field(d, k)), None)
        if kind is None:
            return None
        output_type = OUTPUT_TYPES[kind]
        return output_type(output_type.value_from(get_field(d, kind)), int(get_field(d, "turn_index", 0) or 0), bool(get_field(d, "turn_completed", False)))

    @classmethod
    def value_from(cls, raw: Any) -> Any:
        """The value from the output's JSON body."""
        return raw or ""

    def body(self) -> Any:
        """The output's JSON body, as the proto JSON mapping spells it."""
        return self.value

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        """Raise TranscriptError (naming `at`) when the JSON body cannot be this output."""
        _string(raw, at)

    def to_dict(self) -> dict:
        out = {self.kind: self.body(), "turn_index": self.turn_index}
        if self.turn_completed:
            out["turn_completed"] = True
        return out


@dataclass
class TextOutput(Output):
    value: str = ""
    kind: ClassVar[str] = "text"


@dataclass
class AudioOutput(Output):
    value: bytes = b""
    kind: ClassVar[str] = "audio"

    @classmethod
    def value_from(cls, raw: Any) -> bytes:
        return _bytes(raw)

    def body(self) -> str:
        return _b64(self.value)

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        _base64(raw, at)


@dataclass
class ToolCallsOutput(Output):
    value: list[ToolCall] = field(default_factory=list)
    kind: ClassVar[str] = "tool_calls"

    @classmethod
    def value_from(cls, raw: Any) -> list[ToolCall]:
        return [ToolCall.from_dict(c) for c in get_field(raw or {}, "tool_calls") or []]

    def body(self) -> dict:
        return {"tool_calls": [c.to_dict() for c in self.value]}

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        _check_list(_obj(raw, at), "tool_calls", at, _check_call)


@dataclass
class CitationsOutput(Output):
    value: list[Citation] = field(default_factory=list)
    kind: ClassVar[str] = "citations"

    @classmethod
    def value_from(cls, raw: Any) -> list[Citation]:
        return [Citation.from_dict(c) for c in get_field(raw or {}, "cited_chunks") or []]

    def body(self) -> dict:
        return {"cited_chunks": [c.to_dict() for c in self.value]}

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        _check_list(_obj(raw, at), "cited_chunks", at, _check_citation)


@dataclass
class SearchSuggestionsOutput(Output):
    value: SearchSuggestions = field(default_factory=SearchSuggestions)
    kind: ClassVar[str] = "google_search_suggestions"

    @classmethod
    def value_from(cls, raw: Any) -> SearchSuggestions:
        return SearchSuggestions.from_dict(raw or {})

    def body(self) -> dict:
        return self.value.to_dict()

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        body = _obj(raw, at)
        _check_list(body, "htmls", at, _string)
        _check_list(body, "web_search_queries", at, _check_query)


@dataclass
class EndSessionOutput(Output):
    value: dict = field(default_factory=dict)  # the end_session metadata
    kind: ClassVar[str] = "end_session"

    @classmethod
    def value_from(cls, raw: Any) -> dict:
        return get_field(raw or {}, "metadata") or {}

    def body(self) -> dict:
        return {"metadata": self.value}

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        _fields(_obj(raw, at), at, _obj, "metadata")


@dataclass
class PayloadOutput(Output):
    value: dict = field(default_factory=dict)
    kind: ClassVar[str] = "payload"

    @classmethod
    def value_from(cls, raw: Any) -> dict:
        return raw or {}

    @classmethod
    def check_body(cls, raw: Any, at: "_At") -> None:
        _obj(raw, at)


OUTPUT_TYPES: dict[str, type[Output]] = {t.kind: t for t in (
    TextOutput, AudioOutput, ToolCallsOutput, CitationsOutput, SearchSuggestionsOutput, EndSessionOutput, PayloadOutput)}
OUTPUT_KINDS = tuple(OUTPUT_TYPES)


@dataclass
class UserInput:
    """One SessionInput. `value`: str for text/dtmf/event, dict for variables,
    (mime_type, bytes) for image/blob, bytes for audio, list[ToolResponse] for tool_responses."""

    kind: str
    value: Any

    @classmethod
    def from_dict(cls, d: dict) -> "UserInput | None":
        kind = next((k for k in INPUT_KINDS if has_field(d, k)), None)
        if kind is None:
            return None
        raw = get_field(d, kind)
        if kind == "event":
            value: Any = get_field(raw, "event", "") if isinstance(raw, dict) else raw
        elif kind in ("image", "blob"):
            value = (get_field(raw, "mime_type", ""), _bytes(get_field(raw, "data")))
        elif kind == "audio":
            value = _bytes(raw)
        elif kind == "tool_responses":
            value = [ToolResponse.from_dict(r) for r in get_field(raw or {}, "tool_responses") or []]
        else:
            value = raw if raw is not None else ""
        return cls(kind, value)

    def to_dict(self) -> dict:
        v = self.value
        if self.kind == "event":
            return {"event": {"event": v}}
        if self.kind in ("image", "blob"):
            return {self.kind: {"mime_type": v[0], "data": _b64(v[1])}}
        if self.kind == "audio":
            return {"audio": _b64(v)}
        if self.kind == "tool_responses":
            return {"tool_responses": {"tool_responses": [r.to_dict() for r in v]}}
        return {self.kind: v}


@dataclass
class Chunk:
    """One chunk of a diagnostic Message; `value` as for the matching input/output kind."""

    kind: str
    value: Any

    @classmethod
    def from_dict(cls, d: dict) -> "Chunk | None":
        kind = next((k for k in CHUNK_KINDS if has_field(d, k)), None)
        if kind is None:
            return None
        raw = get_field(d, kind)
        if kind in ("image", "blob"):
            value: Any = (get_field(raw, "mime_type", ""), _bytes(get_field(raw, "data")))
        elif kind == "tool_call":
            value = ToolCall.from_dict(raw)
        elif kind == "tool_response":
            value = ToolResponse.from_dict(raw)
        elif kind == "agent_transfer":
            value = {"target_agent": get_field(raw, "target_agent", ""), "display_name": get_field(raw, "display_name", "")}
        else:
            value = raw if raw is not None else ("" if kind in ("text", "transcript") else {})
        return cls(kind, value)

    def to_dict(self) -> dict:
        v = self.value
        if self.kind in ("image", "blob"):
            return {self.kind: {"mime_type": v[0], "data": _b64(v[1])}}
        if self.kind in ("tool_call", "tool_response"):
            return {self.kind: v.to_dict()}
        return {self.kind: v}


@dataclass
class Message:
    role: str
    chunks: list[Chunk] = field(default_factory=list)
    event_time_ns: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Message":
        chunks = [c for c in (Chunk.from_dict(x) for x in get_field(d, "chunks") or []) if c is not None]
        return cls(get_field(d, "role", ""), chunks, timestamp_ns(get_field(d, "event_time")))

    def to_dict(self) -> dict:
        out: dict = {"role": self.role, "chunks": [c.to_dict() for c in self.chunks]}
        if self.event_time_ns is not None:
            out["event_time"] = _timestamp_json(self.event_time_ns)
        return out


_SPAN_KIND_BY_WORD = {k.lower(): k for k in SPAN_KINDS}


def span_kind(name: str) -> str:
    """A span's kind from its name: LLM / Tool / Callback / Guardrail / VAD / ASR / TTS, or the name itself."""
    return _SPAN_KIND_BY_WORD.get(name.split(" ", 1)[0].lower(), name)


@dataclass
class Span:
    name: str
    start_ns: int | None = None
    end_ns: int | None = None
    duration_ns: int | None = None
    attributes: dict = field(default_factory=dict)
    children: list["Span"] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "Span":
        # Iterative, so a deep tree from the wild cannot hit the recursion limit.
        root = cls._one(d)
        stack = [(root, d)]
        while stack:
            span, raw = stack.pop()
            for child_raw in get_field(raw, "child_spans") or []:
                child = cls._one(child_raw)
                span.children.append(child)
                stack.append((child, child_raw))
        return root

    @classmethod
    def _one(cls, d: dict) -> "Span":
        start, end = timestamp_ns(get_field(d, "start_time")), timestamp_ns(get_field(d, "end_time"))
        duration = _duration_ns(get_field(d, "duration"))
        if duration is None and start is not None and end is not None:
            duration = end - start
        # A null name is protobuf JSON's default, "", as a null time is no time.
        return cls(get_field(d, "name") or "", start, end, duration, dict(get_field(d, "attributes") or {}))

    def to_dict(self) -> dict:
        out: dict = {"name": self.name}
        if self.start_ns is not None:
            out["start_time"] = _timestamp_json(self.start_ns)
        if self.end_ns is not None:
            out["end_time"] = _timestamp_json(self.end_ns)
        if self.duration_ns is not None:
            out["duration"] = _duration_json(self.duration_ns)
        if self.attributes:
            out["attributes"] = self.attributes
        if self.children:
            out["child_spans"] = [c.to_dict() for c in self.children]
        return out

    @property
    def duration_ms(self) -> float | None:
        return None if self.duration_ns is None else self.duration_ns / 1e6

    @property
    def kind(self) -> str:
        """LLM / Tool / Callback / Guardrail / VAD / ASR / TTS, or the name itself."""
        return span_kind(self.name)

    def walk(self, depth: int = 0) -> Iterable[tuple[int, "Span"]]:
        """Depth-first (depth, span) pairs, iteratively."""
        stack = [(depth, self)]
        while stack:
            d, span = stack.pop()
            yield d, span
            stack.extend((d + 1, c) for c in reversed(span.children))


@dataclass
class Turn:
    """One exchange: what the user sent, everything the agent answered, and the diagnostics."""

    index: int = 0
    inputs: list[UserInput] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    root_span: Span | None = None
    completed: bool = False
    partial: bool = False
    error: str | None = None
    events: list[dict] = field(default_factory=list)  # bidi-only: recognition results, barge-in, go_away
    audio_encoding: str = "LINEAR16"
    audio_sample_rate: int = 16000
    # Not part of the saved record: the turn that answered this one's tool calls
    # automatically (a session's auto-answer), and notes on how the turn came to be.
    continuation: "Turn | None" = field(default=None, compare=False, repr=False)
    notes: list[str] = field(default_factory=list, compare=False, repr=False)
    # What a loaded file held that its field cannot (left out of the turn), each naming the field:
    # "turns[3].outputs[1].audio: not valid base64". Rendered as error cards.
    load_errors: list[str] = field(default_factory=list, compare=False, repr=False)

    # -- building ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = True, at: str = "turn") -> "Turn":
        """From the transcript format, or a JSON SessionOutput list / Conversation.Turn from the wild.

        A value its field cannot hold raises TranscriptError naming it (`turn.outputs[1].audio:
        not valid base64`); with strict=False it is left out, listed in `load_errors`, and the
        rest of the turn is kept."""
        reader = _Reader(strict)
        turn = reader.turn(d, _At(None, at))
        turn.load_errors = reader.problems
        return turn

    def add_output(self, d: dict) -> Output | None:
        """Fold one SessionOutput (as a dict) into the turn; returns the Output it held, if any."""
        output = Output.from_dict(d)
        if output is not None:
            self.outputs.append(output)
        index = int(get_field(d, "turn_index", 0) or 0)
        if index:
            self.index = index
        if get_field(d, "turn_completed"):
            self.completed = True
            if output is not None:
                output.turn_completed = True
        diagnostic = get_field(d, "diagnostic_info")
        if diagnostic:
            self.messages = [Message.from_dict(m) for m in get_field(diagnostic, "messages") or []]
            root = get_field(diagnostic, "root_span")
            if isinstance(root, Span):
                self.root_span = root
            elif root:
                self.root_span = Span.from_dict(root)
        return output

    # -- reading -------------------------------------------------------------------

    def of_kind(self, kind: str) -> list:
        """The values of the outputs of one kind ("text", "tool_calls", …), in order."""
        return self.values(OUTPUT_TYPES[kind])

    def values(self, output_type: type[Output]) -> list:
        """The values of the outputs of one type (TextOutput, ToolCallsOutput, …), in order."""
        return [o.value for o in self.outputs if isinstance(o, output_type)]

    @property
    def text(self) -> str:
        """The agent's text. Streamed fragments join as they are; whole messages
        (one ends a sentence, the next starts afresh) become paragraphs."""
        out = ""
        for piece in self.values(TextOutput):
            if out and out[-1] in ".!?:)" and piece and not piece[0].isspace():
                out += "\n\n"
            out += piece
        return out

    @property
    def user_text(self) -> str:
        return " ".join(str(i.value) for i in self.inputs if i.kind in ("text", "dtmf"))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for calls in self.values(ToolCallsOutput) for c in calls]

    @property
    def citations(self) -> list[Citation]:
        return [c for cs in self.values(CitationsOutput) for c in cs]

    @property
    def search_suggestions(self) -> list[SearchSuggestions]:
        return self.values(SearchSuggestionsOutput)

    @property
    def payloads(self) -> list[dict]:
        return self.values(PayloadOutput)

    @property
    def audio(self) -> bytes:
        return b"".join(self.values(AudioOutput))

    @property
    def end_session(self) -> dict | None:
        ends = self.values(EndSessionOutput)
        return ends[-1] if ends else None

    @property
    def ended(self) -> bool:
        return self.end_session is not None

    @property
    def transfers(self) -> list[dict]:
        return [c.value for m in self.messages for c in m.chunks if c.kind == "agent_transfer"]

    @property
    def heard(self) -> str:
        """What the recognizer made of the user's audio (its last recognition_result)."""
        results = [e["recognition_result"].get("transcript", "") for e in self.events if "recognition_result" in e]
        return results[-1] if results else ""

    @property
    def interrupted(self) -> bool:
        return any(e.get("interruption_signal", {}).get("barge_in") for e in self.events)

    @property
    def interrupted_at_ms(self) -> float | None:
        """How far into the agent's audio the user barged in."""
        return next((e.get("after_audio_ms") for e in self.events if "interruption_signal" in e), None)

    @property
    def audio_ms(self) -> float:
        """Duration of the agent's audio so far, in its encoding and rate."""
        from .audio import BYTES_PER_SAMPLE, encoding_name

        width = BYTES_PER_SAMPLE[encoding_name(self.audio_encoding)]
        return len(self.audio) / width / max(1, self.audio_sample_rate) * 1000

    @property
    def perceived_latency_ms(self) -> float | None:
        if self.root_span is None:
            return None
        value = self.root_span.attributes.get("perceived latency (ms)")
        return float(value) if isinstance(value, (int, float)) else None

    # -- writing -------------------------------------------------------------------

    def to_dict(self) -> dict:
        out: dict = {
            "turn_index": self.index,
            "completed": self.completed,
            "partial": self.partial,
            "error": self.error,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "messages": [m.to_dict() for m in self.messages],
            "root_span": self.root_span.to_dict() if self.root_span else None,
            "audio": {"encoding": self.audio_encoding, "sample_rate_hertz": self.audio_sample_rate},
        }
        if self.events:
            out["events"] = self.events
        return out

    @property
    def chain(self) -> list["Turn"]:
        """This turn and the turns that answered its tool calls automatically."""
        turns, turn = [self], self.continuation
        while turn is not None and len(turns) < 100:
            turns.append(turn)
            turn = turn.continuation
        return turns

    @property
    def last(self) -> "Turn":
        return self.chain[-1]

    # The renderers take records and import none of this module, so records can call them;
    # they load on first display (the HTML side pulls in markdown-it and nh3).
    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import turn_html
        from .render.text import chain_text

        text = chain_text(self)
        return {"text/plain": text, "text/html": turn_html(self, text)}

    def __repr__(self) -> str:
        from .render.text import chain_text

        return chain_text(self)


def pending_calls(turns: Iterable["Turn"]) -> dict[str, ToolCall]:
    """Client tool calls still waiting for an answer after `turns`, by call id. An answer sent
    in a turn that was cut short (partial) doesn't count: the server stores a turn whole or not
    at all, and one that broke was almost always not stored."""
    calls: dict[str, ToolCall] = {}
    for turn in turns:
        for item in ([] if turn.partial else turn.inputs):
            if item.kind == "tool_responses":
                for response in item.value:
                    calls.pop(response.id, None)
        for call in turn.tool_calls:
            calls[call.id] = call
    return calls


def io_messages(turn: "Turn") -> list[Message]:
    """A turn's inputs and outputs as CES Messages, for turns without diagnostic messages."""
    user = Message("user")
    for item in turn.inputs:
        if item.kind in ("text", "dtmf", "event"):
            user.chunks.append(Chunk("text", item.value if item.kind == "text" else f"{item.kind}: {item.value}"))
        elif item.kind == "variables":
            user.chunks.append(Chunk("updated_variables", item.value))
        elif item.kind in ("image", "blob"):
            user.chunks.append(Chunk(item.kind, item.value))
        elif item.kind == "tool_responses":
            user.chunks.extend(Chunk("tool_response", r) for r in item.value)
    agent = Message("agent")
    for output in turn.outputs:
        if isinstance(output, TextOutput):
            agent.chunks.append(Chunk("text", output.value))
        elif isinstance(output, ToolCallsOutput):
            agent.chunks.extend(Chunk("tool_call", c) for c in output.value)
        elif isinstance(output, PayloadOutput):
            agent.chunks.append(Chunk("payload", output.value))
    return [m for m in (user, agent) if m.chunks]


def io_from_messages(messages: list[Message], index: int) -> tuple[list[UserInput], list[Output]]:
    inputs: list[UserInput] = []
    outputs: list[Output] = []
    # A call answered inside an agent message ran on the server; only client calls are outputs.
    server_ids = {c.value.id for m in messages if m.role.lower() != "user" for c in m.chunks if c.kind == "tool_response"}
    for message in messages:
        for chunk in message.chunks:
            if message.role.lower() == "user":
                if chunk.kind in ("text", "transcript"):
                    inputs.append(UserInput("text", chunk.value))
                elif chunk.kind in ("image", "blob"):
                    inputs.append(UserInput(chunk.kind, chunk.value))
                elif chunk.kind == "tool_response":
                    inputs.append(UserInput("tool_responses", [chunk.value]))
                elif chunk.kind in ("updated_variables", "default_variables") and chunk.value:
                    inputs.append(UserInput("variables", chunk.value))
                continue
            if chunk.kind in ("text", "transcript"):
                outputs.append(TextOutput(chunk.value, index))
            elif chunk.kind == "tool_call" and chunk.value.id not in server_ids:
                outputs.append(ToolCallsOutput([chunk.value], index))
            elif chunk.kind == "payload":
                outputs.append(PayloadOutput(chunk.value, index))
    return inputs, outputs


# How deep JSON given to CES (variables, tool responses, mocks) may nest. protobuf stops
# decoding at 100 messages and each JSON level is two (Value and Struct or ListValue);
# historical_contexts and BidiRunSession wrap variables a few messages deeper still.
MAX_JSON_DEPTH = 32


def json_depth(value: Any, stop: int | None = None) -> int:
    """How many dicts and lists nest along the deepest path ({"a": [1]} is 2), iteratively;
    returns as soon as it passes `stop` (so a structure that contains itself ends too)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if stop is not None and deepest > stop:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_value(value: Any) -> Any:
    """A span attribute that holds JSON text (args, responses) as the value it encodes."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def sorted_keys(value: Any) -> Any:
    """Dicts with their keys sorted, all the way down. Protobuf Structs come back in a
    per-process order; sorting makes every view of a turn the same from run to run."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


@dataclass
class ToolResult:
    """What ToolService.ExecuteTool answered."""

    tool: str
    args: dict
    response: dict
    citations: list[Citation] = field(default_factory=list)
    search_suggestions: SearchSuggestions | None = None
    variables: dict = field(default_factory=dict)
    mocked: bool = False

    @property
    def name(self) -> str:
        return self.tool.rsplit("/", 1)[-1]

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import tool_result_html
        from .render.text import tool_result_text

        text = tool_result_text(self)
        return {"text/plain": text, "text/html": tool_result_html(self, text)}

    def __repr__(self) -> str:
        from .render.text import tool_result_text

        return tool_result_text(self)


@dataclass
class Transcript:
    """A session's turns, savable to JSON and loadable with no server."""

    turns: list[Turn] = field(default_factory=list)
    session: str = ""
    app: str = ""
    metadata: dict = field(default_factory=dict)
    load_errors: list[str] = field(default_factory=list, compare=False, repr=False)  # file-level, as on Turn

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "session": self.session,
            "app": self.app,
            "metadata": self.metadata,
            "turns": [t.to_dict() for t in self.turns],
        }

    @classmethod
    def from_dict(cls, d: dict | list, *, strict: bool = False) -> "Transcript":
        """The transcript format, a Conversation (JSON), or a bare list of turns.

        One bad turn does not cost the others: a value its field cannot hold is left out of
        its turn and listed in the turn's `load_errors` (rendered as an error card naming the
        turn and the field). strict=True raises TranscriptError for the first one instead.
        Data that is no transcript at all raises ValueError either way."""
        if isinstance(d, list):
            turns = _read_turns(d, "", strict, conversation=False)
            if d and all(t.load_errors and not _readable(t) for t in turns):
                raise _not_a_transcript(f"a list, but none of its {len(d)} items is a turn (an object with outputs, "
                                        f"or a list of SessionOutputs); the first: {turns[0].load_errors[0]}")
            return cls(turns)
        if not isinstance(d, dict):
            raise _not_a_transcript(f'the JSON holds {_shown(d)}, where a transcript is an object with "turns"')
        if not has_field(d, "turns") and get_field(d, "format") != FORMAT:
            keys = sorted(str(k) for k in d)
            listed = ", ".join(keys[:8]) + (", …" if len(keys) > 8 else "")
            raise _not_a_transcript(f'an object with no "turns" (its keys: {listed or "none"})')
        raw_turns = get_field(d, "turns")
        if raw_turns is not None and not isinstance(raw_turns, list):
            raise _not_a_transcript(f'"turns" is {_shown(raw_turns)}, where a list of turns belongs')
        reader = _Reader(strict)
        top = _At(None, "")
        if get_field(d, "format") != FORMAT:  # a Conversation from the wild
            turns = _read_turns(raw_turns or [], "turns", strict, conversation=True)
            meta = {k: get_field(d, k) for k in ("start_time", "end_time", "source", "channel_type", "entry_agent") if has_field(d, k)}
            name = reader.guard(top / _key(d, "name"), _string, get_field(d, "name"), top / _key(d, "name")) or ""
            return cls(turns, session=name, app=name.split("/conversations/")[0], metadata=meta, load_errors=reader.problems)
        version = get_field(d, "version", VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise _not_a_transcript(f'"version" is {_shown(version)}, where a whole number belongs (this ces_nb writes {VERSION})')
        if version > VERSION:
            raise ValueError(f"transcript format version {version} is newer than this ces_nb reads ({VERSION}); upgrade ces_nb")
        session = reader.guard(top / "session", _string, get_field(d, "session"), top / "session") or ""
        app = reader.guard(top / "app", _string, get_field(d, "app"), top / "app") or ""
        metadata = reader.guard(top / "metadata", _obj, get_field(d, "metadata"), top / "metadata") or {}
        turns = _read_turns(raw_turns or [], _key(d, "turns"), strict, conversation=False)
        return cls(turns, session, app, metadata, load_errors=reader.problems)

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder: name a file in it, e.g. {path / 'trip.json'}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no folder {path.parent}: create it first (Path({str(path.parent)!r}).mkdir(parents=True)), "
                                    "or save into a folder that exists, e.g. 'trip.json'")
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        _replace_file(path, text.encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | Path, *, strict: bool = False) -> "Transcript":
        """A transcript file (or a Conversation / SessionOutput list in JSON). A bad turn renders as
        an error card naming the field, the other turns as usual; strict=True raises
        TranscriptError for it instead (`trip.json: turns[3].outputs[1].audio: not valid base64`)."""
        data = read_json_file(path)
        try:
            return cls.from_dict(data, strict=strict)
        except TranscriptError as exc:
            raise TranscriptError(exc.path, f"{exc.problem}. Load it without strict=True to see the other turns, "
                                  "this one as an error card", source=str(path)) from None
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @property
    def ended(self) -> bool:
        return any(t.ended for t in self.turns)

    def to_golden(self, path: str | Path | None = None, *, name: str | None = None, tags: list[str] | None = None,
                  format: str | None = None) -> str:
        """The conversation as a golden for `ces_nb.evaluate`: cxas-scrapi YAML (default) or, with
        format="json" or a .json path, a native CES Evaluation. Answers given to client tool calls
        become the golden's `output` / `mockToolResponse`. Writes `path` when given; returns the text."""
        from .evals.goldens import to_golden

        return to_golden(self, path, name=name, tags=tags, format=format)

    def diff(self, other: "Transcript", tolerance: float = 0.5, min_ms: float = 5.0):
        """What differs, turn by turn: text, tool calls and args, and span durations (beyond
        `tolerance` relative and `min_ms` absolute). HTML in a notebook; `.frame` is a DataFrame."""
        from .diff import TranscriptDiff

        return TranscriptDiff(self, other, tolerance, min_ms)

    def __len__(self) -> int:
        return len(self.turns)

    def __getitem__(self, i):
        return self.turns[i]

    def __iter__(self):
        return iter(self.turns)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import transcript_html
        from .render.text import transcript_text

        text = transcript_text(self)
        return {"text/plain": text, "text/html": transcript_html(self, text)}

    def __repr__(self) -> str:
        from .render.text import transcript_text

        return transcript_text(self)


# -- reading JSON that may not be what it claims ----------------------------------------------

class TranscriptError(ValueError):
    """A value in a transcript that its field cannot hold. `.path` names the field as the JSON
    spells it (`turns[3].outputs[1].audio`), `.problem` says what is wrong with it."""

    def __init__(self, path: str, problem: str, *, source: str = ""):
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.path, self.problem, self.source = path, problem, source


def _replace_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file beside `path`, flushed to disk, then put it in path's place: a
    crash, a full disk or a reader mid-write sees the old transcript or the new one, never half of
    it. Where a new file could not stand for the old one as it is (the folder is not ours to write,
    another name links to the file, another user owns it), the file is written in place, as
    open(path, "w") would."""
    import errno
    import os
    import tempfile

    target = path.resolve()  # through a symlink: the file it names is replaced, the link kept
    if not target.exists():  # nobody reads it yet, and it gets the mode a new file gets
        target.write_bytes(data)
        return
    if not os.access(target, os.W_OK):  # a file made read-only stays as it is
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    old = target.stat()
    owned = not hasattr(os, "geteuid") or old.st_uid == os.geteuid()
    if old.st_nlink > 1 or not owned or not os.access(target.parent, os.W_OK | os.X_OK):
        target.write_bytes(data)
        return
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, old.st_mode & 0o7777)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """The rename itself on disk too (POSIX); a file system or OS that cannot sync a folder has
    done what it can."""
    import os

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json_file(path: str | Path, data: bytes | None = None) -> Any:
    """A saved transcript's (or Conversation export's) JSON, as json.load reads it, or a ValueError
    naming the file and how to write one; `data`: its bytes, when they are read already. msgspec
    parses it faster and either gives the same values (ints past 64 bits included, where orjson
    gives floats) or refuses; what it refuses (NaN, 1e400, lone surrogates, a BOM) the standard
    library reads, or refuses with its own error."""
    import msgspec

    if data is None:
        data = Path(path).read_bytes()
    try:
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: " + str(_not_a_transcript("it is not UTF-8 text (a binary file?)"))) from None
    except RecursionError:
        raise ValueError(f"{path}: " + str(_not_a_transcript("its JSON nests too deep to read (about 1000 levels or more)"))) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc}), so not a transcript; write one with session.save(path) "
                         "or %cescmd save PATH") from None


def _not_a_transcript(why: str) -> ValueError:
    return ValueError(f"not a transcript: {why}. Write one with session.save(path) or %cescmd save PATH")


class _At:
    """Where a value sits (`turns[3].outputs[1].audio`), spelled out only when something is wrong,
    so a 5 000-deep span tree costs no 5 000 growing strings."""

    __slots__ = ("parent", "part")

    def __init__(self, parent: "_At | None", part: str):
        self.parent, self.part = parent, part

    def __truediv__(self, part: str) -> "_At":
        return _At(self, part)

    def __str__(self) -> str:
        parts, node = [], self
        while node is not None:
            parts.append(node.part)
            node = node.parent
        parts.reverse()
        if len(parts) > 16:  # a deep span tree: the ends say where, the middle only how far
            parts = [*parts[:6], f"…{len(parts) - 12} more…", *parts[-6:]]
        out = ""
        for part in parts:
            out += part if (not out or part.startswith("[")) else f".{part}"
        return out


_JSON_NAMES = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (dict, "an object"), ((list, tuple), "a list"))


def _shown(value: Any) -> str:
    """`a number: 5`, `an object: {"a": 1}`: what a value is, and the start of it."""
    if value is None:
        return "null"
    kind = next((name for types, name in _JSON_NAMES if isinstance(value, types)), f"a {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return f"{kind}: {text if len(text) <= 60 else text[:59] + '…'}"


def _key(d: dict, name: str) -> str:
    """The spelling of `name` that `d` uses (for paths in messages)."""
    return name if name in d or _camel(name) not in d else _camel(name)


def _need(value: Any, types: Any, at: _At, what: str) -> Any:
    if not isinstance(value, types):
        raise TranscriptError(str(at), f"expected {what}, got {_shown(value)}")
    return value


def _string(value: Any, at: _At) -> str:
    return "" if value is None else _need(value, str, at, "a string")


def _obj(value: Any, at: _At) -> dict:
    return {} if value is None else _need(value, dict, at, "an object")


def _items(value: Any, at: _At) -> list:
    return [] if value is None else _need(value, list, at, "a list")


def _whole(value: Any, at: _At) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TranscriptError(str(at), f"expected a whole number, got {_shown(value)}")
    try:
        return int(value)
    except ValueError:
        raise TranscriptError(str(at), f"expected a whole number, got {_shown(value)}") from None


def _number(value: Any, at: _At) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TranscriptError(str(at), f"expected a number, got {_shown(value)}")
    return value


def _base64(value: Any, at: _At) -> None:
    if value is None or isinstance(value, (bytes, bytearray)):
        return
    if not isinstance(value, str):
        raise TranscriptError(str(at), f"expected base64 text, got {_shown(value)}")
    text = "".join(value.split())
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise TranscriptError(str(at), "not valid base64") from None


def _time(value: Any, at: _At, parse, what: str) -> None:
    try:
        parse(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise TranscriptError(str(at), f"not {what}, got {_shown(value)}") from None


def _fields(d: dict, at: _At, check, *names: str) -> None:
    for name in names:
        if has_field(d, name):
            check(get_field(d, name), at / _key(d, name))


def _first_kind(d: dict, kinds: tuple) -> str | None:
    return next((k for k in kinds if has_field(d, k)), None)


def _check_call(raw: Any, at: _At) -> None:
    """A ToolCall or ToolResponse."""
    _need(raw, dict, at, "an object")
    _fields(raw, at, _string, "id", "tool", "display_name")
    _fields(raw, at, _obj, "args", "response")
    if has_field(raw, "toolset_tool"):
        _fields(_obj(get_field(raw, "toolset_tool"), at / _key(raw, "toolset_tool")), at / _key(raw, "toolset_tool"), _string, "toolset", "tool_id")


def _check_list(raw: dict, name: str, at: _At, check) -> None:
    key = _key(raw, name)
    for i, item in enumerate(_items(get_field(raw, name), at / key)):
        check(item, at / f"{key}[{i}]")


def _check_media(value: Any, at: _At) -> None:
    body = _obj(value, at)
    _fields(body, at, _string, "mime_type")
    _fields(body, at, _base64, "data")


def _check_input(raw: Any, at: _At) -> "UserInput | None":
    _need(raw, dict, at, "an input (an object)")
    kind = _first_kind(raw, INPUT_KINDS)
    if kind is None:
        return None
    value, here = get_field(raw, kind), at / _key(raw, kind)
    if kind in ("text", "dtmf"):
        _string(value, here)
    elif kind == "event":
        if isinstance(value, dict):
            _fields(value, here, _string, "event")
        else:
            _string(value, here)
    elif kind in ("image", "blob"):
        _check_media(value, here)
    elif kind == "audio":
        _base64(value, here)
    elif kind == "tool_responses":
        _check_list(_obj(value, here), "tool_responses", here, _check_call)
    elif kind == "variables":
        _obj(value, here)
    return UserInput.from_dict(raw)


def _check_citation(raw: Any, at: _At) -> None:
    _fields(_need(raw, dict, at, "a cited chunk (an object)"), at, _string, "title", "uri", "text")


def _check_query(raw: Any, at: _At) -> None:
    _fields(_need(raw, dict, at, "a search query (an object)"), at, _string, "query", "uri")


def _check_output(raw: Any, at: _At) -> bool:
    _need(raw, dict, at, "an output (an object)")
    kind = _first_kind(raw, OUTPUT_KINDS)
    if kind is not None:
        OUTPUT_TYPES[kind].check_body(get_field(raw, kind), at / _key(raw, kind))
    _fields(raw, at, _whole, "turn_index")
    return True


def _check_chunk(raw: Any, at: _At) -> None:
    _need(raw, dict, at, "a chunk (an object)")
    kind = _first_kind(raw, CHUNK_KINDS)
    if kind is None:
        return
    value, here = get_field(raw, kind), at / _key(raw, kind)
    if kind in ("text", "transcript"):
        _string(value, here)
    elif kind in ("image", "blob"):
        _check_media(value, here)
    elif kind in ("tool_call", "tool_response"):
        _check_call(value, here)
    elif kind == "agent_transfer":
        _fields(_obj(value, here), here, _string, "target_agent", "display_name")
    else:
        _obj(value, here)


def _check_message(raw: Any, at: _At) -> Message:
    _need(raw, dict, at, "a message (an object)")
    _fields(raw, at, _string, "role")
    _check_list(raw, "chunks", at, _check_chunk)
    if get_field(raw, "event_time") not in (None, ""):
        _time(get_field(raw, "event_time"), at / _key(raw, "event_time"), timestamp_ns, "a timestamp")
    return Message.from_dict(raw)


def _check_span(raw: Any, at: _At) -> Span:
    """One span, its children not included."""
    _need(raw, dict, at, "a span (an object)")
    _fields(raw, at, _string, "name")
    _fields(raw, at, _obj, "attributes")
    for name in ("start_time", "end_time"):
        if get_field(raw, name) not in (None, ""):
            _time(get_field(raw, name), at / _key(raw, name), timestamp_ns, "a timestamp")
    if get_field(raw, "duration") not in (None, ""):
        _time(get_field(raw, "duration"), at / _key(raw, "duration"), _duration_ns, "a duration")
    return Span._one(raw)


def _check_event(raw: Any, at: _At) -> dict:
    _need(raw, dict, at, "an event (an object)")
    for kind in ("recognition_result", "interruption_signal"):
        if kind in raw:
            _fields(_obj(raw[kind], at / kind), at / kind, _string, "transcript")
    _fields(raw, at, _number, "after_audio_ms")
    return raw


def _check_audio(raw: Any, at: _At) -> tuple[str | None, int | None]:
    from .audio import SAMPLE_RATES, encoding_name

    body = _obj(raw, at)
    encoding = rate = None
    if get_field(body, "encoding") is not None:
        here = at / _key(body, "encoding")
        encoding = _string(get_field(body, "encoding"), here)
        try:
            encoding_name(encoding)
        except ValueError as exc:
            raise TranscriptError(str(here), str(exc)) from None
    if get_field(body, "sample_rate_hertz") is not None:
        here = at / _key(body, "sample_rate_hertz")
        rate = _whole(get_field(body, "sample_rate_hertz"), here)
        if rate <= 0:
            raise TranscriptError(str(here), f"expected a sample rate such as {', '.join(map(str, SAMPLE_RATES))}, got {rate}")
    return encoding, rate


# What a check that did not foresee a value may still raise while building from it.
_UNFORESEEN = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError, binascii.Error)


class _Reader:
    """Builds turns from JSON, checking each value against its field. strict: the first bad value
    raises TranscriptError; otherwise it is left out, noted in `problems`, and the rest is kept."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.problems: list[str] = []

    def guard(self, at: _At, fn, *args):
        """fn(*args), or None when it meets a value its field cannot hold."""
        try:
            return fn(*args)
        except TranscriptError as exc:
            if self.strict:
                raise
            self.problems.append(str(exc))
        except _UNFORESEEN as exc:
            error = TranscriptError(str(at), f"could not be read ({type(exc).__name__}: {exc})")
            if self.strict:
                raise error from None
            self.problems.append(str(error))
        return None

    def each(self, d: dict, name: str, at: _At, check) -> list:
        """d[name] as a list, each item through `check`; the items it refuses are left out."""
        key = _key(d, name)
        out = []
        for i, raw in enumerate(self.guard(at / key, _items, get_field(d, name), at / key) or []):
            item = self.guard(at / f"{key}[{i}]", check, raw, at / f"{key}[{i}]")
            if item is not None:
                out.append(item)
        return out

    def span(self, raw: Any, at: _At) -> Span | None:
        """A span tree, iteratively; a bad span is left out with its children, its siblings stay."""
        root = self.guard(at, _check_span, raw, at)
        stack = [(root, raw, at)] if root is not None else []
        while stack:
            span, d, here = stack.pop()
            key = _key(d, "child_spans")
            for i, child_raw in enumerate(self.guard(here / key, _items, get_field(d, "child_spans"), here / key) or []):
                where = here / f"{key}[{i}]"
                child = self.guard(where, _check_span, child_raw, where)
                if child is not None:
                    span.children.append(child)
                    stack.append((child, child_raw, where))
        return root

    def diagnostics(self, turn: "Turn", info: Any, at: _At) -> None:
        info = self.guard(at, _obj, info, at) or {}
        if has_field(info, "messages"):
            turn.messages = self.each(info, "messages", at, _check_message)
        root = get_field(info, "root_span")
        if isinstance(root, Span):
            turn.root_span = root
        elif root:
            turn.root_span = self.span(root, at / _key(info, "root_span"))

    def output(self, turn: "Turn", raw: Any, at: _At) -> None:
        if not self.guard(at, _check_output, raw, at):
            return
        if has_field(raw, "diagnostic_info"):
            self.diagnostics(turn, get_field(raw, "diagnostic_info"), at / _key(raw, "diagnostic_info"))
            raw = {k: v for k, v in raw.items() if k not in ("diagnostic_info", "diagnosticInfo")}
        self.guard(at, turn.add_output, raw)

    def turn(self, d: Any, at: _At) -> "Turn":
        if isinstance(d, list):  # a bare list of SessionOutputs
            turn = Turn()
            for i, raw in enumerate(d):
                self.output(turn, raw, at / f"[{i}]")
            return turn
        _need(d, dict, at, "a turn (an object)")
        if not has_field(d, "outputs") and has_field(d, "messages"):
            return self.conversation_turn(d, at, self.guard(at / "turn_index", _whole, get_field(d, "turn_index"), at / "turn_index") or 0)
        turn = Turn(inputs=self.each(d, "inputs", at, _check_input))
        key = _key(d, "outputs")
        for i, raw in enumerate(self.guard(at / key, _items, get_field(d, "outputs"), at / key) or []):
            self.output(turn, raw, at / f"{key}[{i}]")
        if has_field(d, "turn_index"):
            index = self.guard(at / _key(d, "turn_index"), _whole, get_field(d, "turn_index"), at / _key(d, "turn_index"))
            turn.index = index if index is not None else turn.index
        if has_field(d, "messages") and not turn.messages:
            turn.messages = self.each(d, "messages", at, _check_message)
        if get_field(d, "root_span") and turn.root_span is None:
            turn.root_span = self.span(get_field(d, "root_span"), at / _key(d, "root_span"))
        turn.completed = bool(get_field(d, "completed", turn.completed))
        turn.partial = bool(get_field(d, "partial", False))
        turn.error = self.guard(at / "error", _string, get_field(d, "error"), at / "error") or None
        turn.events = self.each(d, "events", at, _check_event)
        if has_field(d, "audio"):
            encoding, rate = self.guard(at / "audio", _check_audio, get_field(d, "audio"), at / "audio") or (None, None)
            turn.audio_encoding = encoding or turn.audio_encoding
            turn.audio_sample_rate = rate or turn.audio_sample_rate
        return turn

    def conversation_turn(self, d: Any, at: _At, index: int) -> "Turn":
        """A stored Conversation.Turn: its messages and root_span, the user's chunks as inputs."""
        _need(d, dict, at, "a turn (an object)")
        turn = Turn(index=index, completed=True)
        turn.messages = self.each(d, "messages", at, _check_message)
        if get_field(d, "root_span"):
            turn.root_span = self.span(get_field(d, "root_span"), at / _key(d, "root_span"))
        turn.inputs, turn.outputs = io_from_messages(turn.messages, index)
        if turn.outputs:
            turn.outputs[-1].turn_completed = True
        return turn


def _readable(turn: "Turn") -> bool:
    return bool(turn.inputs or turn.outputs or turn.messages or turn.root_span is not None)


def _read_turns(entries: list, name: str, strict: bool, conversation: bool) -> list["Turn"]:
    """Each entry as a Turn; one that cannot be a turn at all becomes an empty Turn whose
    load_errors say why (strict: TranscriptError)."""
    turns: list[Turn] = []
    for i, raw in enumerate(entries):
        at = _At(None, f"{name}[{i}]")
        reader = _Reader(strict)
        try:
            turn = reader.conversation_turn(raw, at, i + 1) if conversation else reader.turn(raw, at)
            turn.load_errors = reader.problems
        except (TranscriptError, *_UNFORESEEN) as exc:
            error = exc if isinstance(exc, TranscriptError) else TranscriptError(str(at), f"could not be read ({type(exc).__name__}: {exc})")
            if strict:
                raise error from None
            # Numbered after the turn before it, so its card sits where it was.
            turn = Turn(index=i + 1 if conversation else (turns[-1].index if turns else 0) + 1, load_errors=[str(error)])
        turns.append(turn)
    return turns
