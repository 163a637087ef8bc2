"""Session: one CES conversation; send / stream turns, keep the history, save it.

A Session keeps plain Turn records (`session.turns`). What it returns from send, stream,
respond and the live calls is a `LiveTurn`: the view that pairs a Turn with its Session,
so a notebook shows the turn and, under it, the form that answers its pending tool calls.
"""

from __future__ import annotations

import uuid
import weakref
from pathlib import Path
from typing import Any, Callable

from IPython.display import display

from .client_tools import ClientTools, same_tool
from .convert.session_output import add_output, turn_from_outputs
from .convert.tools import tool_result
from .errors import CesError, explain
from .inputs import build_inputs, tool_responses_list
from .model import MAX_JSON_DEPTH, Message, ToolCall, ToolResult, Transcript, Turn, io_messages, json_depth, json_value, pending_calls, sorted_keys
from .names import session_path

MAX_AUTO_ANSWERS = 20  # handler -> agent -> handler ... stops here, whatever the handlers do

CONFIG_FIELDS = (
    "entry_agent",
    "deployment",
    "time_zone",
    "historical_contexts",
    "use_tool_fakes",
    "enable_text_streaming",
    "remote_dialogflow_query_parameters",
    "input_audio_config",
    "output_audio_config",
)


class Session:
    """A conversation with one app. Make one with `client.session(app, session_id=None, **config)`.

    `config` takes every SessionConfig field: entry_agent, deployment, time_zone,
    historical_contexts, use_tool_fakes, enable_text_streaming,
    remote_dialogflow_query_parameters (and the audio configs).
    """

    def __init__(self, client, app: str, session_id: str | None = None, *, tools: ClientTools | None = None, **config: Any):
        unknown = set(config) - set(CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown SessionConfig field(s) {sorted(unknown)}; the fields are {', '.join(CONFIG_FIELDS)}")
        self.client = client
        self.app = app
        self.id = session_id or f"nb-{uuid.uuid4().hex[:12]}"
        self.name = session_path(app, self.id)
        self.config = dict(config)
        self.turns: list[Turn] = []
        self.interrupted: list[Turn] = []  # partial turns a later completed turn replaced (see _keep)
        self.tools = tools or ClientTools()
        self.auto_answer = True
        self.forked_from: tuple[str, int] | None = None
        self._how: dict[str, str] = {}
        self._views = weakref.WeakSet()  # open tool-call forms: told after every turn (see watch)
        self._panels: dict[int, tuple[Turn, Any]] = {}  # id(turn) -> (turn, the form panel of its pending calls)

    # -- config --------------------------------------------------------------------

    def session_config(self):
        """The SessionConfig proto every request of this session carries."""
        from google.cloud import ces_v1
        from google.protobuf import json_format

        fields = dict(self.config)
        contexts = fields.pop("historical_contexts", None) or []
        config = ces_v1.SessionConfig(session=self.name, **{k: v for k, v in fields.items() if v is not None})
        for message in contexts:
            raw = message.to_dict() if hasattr(message, "to_dict") else message
            pb = json_format.ParseDict(raw, ces_v1.Message.pb()(), ignore_unknown_fields=True) if isinstance(raw, dict) else ces_v1.Message.pb(raw)
            config.historical_contexts.append(ces_v1.Message.wrap(pb))
        return config

    # -- turns ---------------------------------------------------------------------

    def send(self, text: str | None = None, **inputs: Any) -> "LiveTurn":
        """One turn through RunSession. Inputs: text, dtmf=, event=, variables=, image=, blob=, tool_responses=."""
        request_inputs = self._inputs(text, inputs)
        self._mark_answered(request_inputs)
        try:
            response = self.client.sessions.run_session(request={"config": self.session_config(), "inputs": request_inputs})
        except Exception as exc:
            raise explain(exc, target=self.client.target, app=self.app) from None
        turn = turn_from_outputs(response.outputs, request_inputs)
        return self.view(self._after(self._keep(turn), stream=False))

    def stream(self, text: str | None = None, *, on_output: Callable[[Turn], None] | None = None, **inputs: Any) -> "LiveTurn":
        """One turn through StreamRunSession; `on_output(turn_so_far)` runs as each output arrives.

        If the stream breaks after some outputs arrived, the turn keeps them, is marked
        `partial`, carries the error, and is returned (and kept in the history)."""
        from google.cloud import ces_v1

        request_inputs = self._inputs(text, inputs)
        self._mark_answered(request_inputs)
        turn = turn_from_outputs([], request_inputs)
        self._audio_format(turn)
        try:
            stream = self.client.sessions.stream_run_session(
                request=ces_v1.RunSessionRequest(config=self.session_config(), inputs=request_inputs)
            )
            for response in stream:
                for output in response.outputs:
                    add_output(turn, output)
                if on_output is not None:
                    on_output(turn)
        except Exception as exc:
            error = explain(exc, target=self.client.target, app=self.app)
            if not turn.outputs:
                raise error from None
            turn.partial, turn.error = True, str(error)
        return self.view(self._after(self._keep(turn), stream=True, on_output=on_output))

    def respond(self, responses: Any, *, how: str = "manual", stream: bool = False, **more: Any) -> "LiveTurn":
        """Answer pending client tool calls: {call_id: response_dict}, or a list of ToolResponses.
        `how` is what the tool-call log records (form, handler, mock, manual)."""
        for r in tool_responses_list(responses, self.pending):
            self._how[r.id] = how
        if stream:
            return self.stream(tool_responses=responses, **more)
        return self.send(tool_responses=responses, **more)

    # -- client tools: handlers, breakpoints, mocks, direct execution ---------------------

    def client_tool(self, name: str):
        """Decorator: calls to tool `name` are answered with fn(**args) (sync or async)."""
        return self.tools.handler(name)

    def break_on(self, name: str) -> None:
        """Stop before a handler's or mock's answer to `name` is sent: the form shows it to edit."""
        self.tools.break_on(name)

    def clear_break(self, name: str | None = None) -> None:
        self.tools.clear_break(name)

    def mock(self, tool: str, response: dict, args: dict | None = None, unmatched: str | None = None):
        """Answer calls to `tool` whose args match `args` (a pattern; None matches all) with `response`.
        Used for client tool calls in this session and sent as MockConfig with run_tool;
        `unmatched` (PASS_THROUGH or FAIL) says what happens to a call no mock matches."""
        return self.tools.mock(tool, response, args, unmatched)

    def run_tool(self, name: str, /, **args: Any) -> ToolResult:
        """Run one tool directly through ToolService.ExecuteTool (mocks apply)."""
        from google.cloud import ces_v1

        tool = self.client.tool_name(self.app, name)
        request = ces_v1.ExecuteToolRequest(parent=self.app, tool=tool, args=args)
        mocked = any(m.matches(ToolCall("", tool, name, args)) for m in self.tools.mocks)
        if self.tools.mocks:
            request.mock_config = self.tools.mock_config()
        try:
            response = self.client.tools.execute_tool(request=request)
        except Exception as exc:
            raise explain(exc, target=self.client.target, app=self.app) from None
        return tool_result(response, args, mocked=mocked)

    @property
    def tool_calls(self):
        """Every tool call of the session as a DataFrame: turn, id, tool, args, response,
        how it was answered (form / handler / mock / manual; fake or server for tools the
        server ran) and latency_ms from receiving the call to sending the response."""
        known = set(self.tools.records)
        fake = bool(self.config.get("use_tool_fakes"))
        server = []
        for turn in self.turns:
            if turn.root_span is None:
                continue
            for _, span in turn.root_span.walk():
                call_id = span.attributes.get("tool call id")
                if span.kind == "Tool" and call_id and call_id not in known:
                    server.append({"turn": turn.index, "id": call_id, "tool": span.attributes.get("name", ""),
                                   "args": json_value(span.attributes.get("args")), "response": json_value(span.attributes.get("response")),
                                   "how": "fake" if fake else "server", "latency_ms": span.duration_ms})
        return self.tools.frame(server)

    def _mark_answered(self, request_inputs: list) -> None:
        from google.protobuf import json_format

        for item in request_inputs:
            for response in item.tool_responses.tool_responses if "tool_responses" in item else []:
                body = sorted_keys(json_format.MessageToDict(type(response).pb(response).response))
                self.tools.answered(response.id, body, self._how.pop(response.id, "manual"))

    def _after(self, turn: Turn, stream: bool, on_output=None, depth: int = 0) -> Turn:
        """Log the turn's tool calls and answer those a mock or handler can, unless a breakpoint holds one."""
        calls = turn.tool_calls
        for call in calls:
            self.tools.received(turn.index, call)
        if not self.auto_answer or not calls or turn.partial:
            return turn
        pending = self.pending
        waiting = [c for c in calls if c.id in pending]
        proposals = {c.id: self.tools.propose(c) for c in waiting}
        for call in waiting:
            p = proposals[call.id]
            if p.error:
                who = "handler" if p.how == "handler" else "mock"
                turn.notes.append(f"{who} for {call.name}: {p.error}; the agent gets {{'error': ...}}")
            if p.hold and p.response is not None:
                turn.notes.append(f"breakpoint on {call.name}: the {p.how}'s response waits in the form for you to send")
        if not waiting or any(p.response is None or p.hold for p in proposals.values()) or depth >= MAX_AUTO_ANSWERS:
            return turn
        answers = {cid: p.response for cid, p in proposals.items()}
        for cid, p in proposals.items():
            self._how[cid] = p.how or "manual"
        names = {c.id: c.name for c in waiting}
        turn.notes.append("answered by " + ", ".join(f"{p.how} ({names[cid]})" for cid, p in proposals.items()))
        continuation = self._continue(answers, stream, on_output, depth)
        turn.continuation = continuation
        return turn

    def _continue(self, answers: dict, stream: bool, on_output, depth: int) -> Turn:
        saved, self.auto_answer = self.auto_answer, False  # one level at a time, counted here
        try:
            turn = self.stream(tool_responses=answers, on_output=on_output) if stream else self.send(tool_responses=answers)
        finally:
            self.auto_answer = saved
        return self._after(turn.record, stream, on_output, depth + 1)


    @property
    def pending(self) -> dict[str, ToolCall]:
        """Client tool calls the agent is still waiting on, by call id (`model.pending_calls`:
        an answer in a turn that was cut short doesn't count)."""
        return pending_calls(self.turns)

    def _inputs(self, text: str | None, inputs: dict) -> list:
        for key in ("variables", "tool_responses"):
            if inputs.get(key) is not None and json_depth(inputs[key], MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
                raise ValueError(f"{key} nest more than {MAX_JSON_DEPTH} levels deep; CES takes at most {MAX_JSON_DEPTH} "
                                 "(protobuf's nesting limit): flatten them, or send the deep part as a JSON string")
        try:
            return build_inputs(text, pending=self.pending, **inputs)
        except TypeError as exc:
            raise TypeError(f"{exc}; inputs are text, dtmf=, event=, variables=, image=, blob=, tool_responses=") from None

    def _keep(self, turn: Turn) -> Turn:
        """Add a turn to the history under the server's number.

        * A turn cut short (partial) was never stored by the server, which will give the same
          number to the next turn it completes: that turn takes the partial one's place, and
          the partial one moves to `interrupted`.
        * A server that restarted without this session's turns counts from 1 again: a turn
          whose number a completed turn here has already is numbered on from the last, with a
          note, so no two turns share a number."""
        self._audio_format(turn)
        while turn.index and self.turns and self.turns[-1].partial and self.turns[-1].index >= turn.index:
            cut = self.turns.pop()
            self.interrupted.append(cut)
            turn.notes.append(f"turn {cut.index} was cut short before (partial: {cut.error or 'no error recorded'}); "
                              f"the server never stored it, and this is the turn it completed")
        last = self.turns[-1].index if self.turns else 0
        if not turn.index:
            turn.index = last + 1
        elif turn.index <= last:
            server, turn.index = turn.index, last + 1
            turn.notes.append(f"the server numbered this turn {server} (it does not have the turns before it, "
                              f"e.g. it restarted without them); kept as turn {turn.index} so no two turns share a number")
        self.turns.append(turn)
        self._changed()
        return turn

    # -- the interactive view ---------------------------------------------------------

    def view(self, turn: Turn) -> "LiveTurn":
        """The turn paired with this session: what send / stream / respond return."""
        return LiveTurn(turn, self)

    def tool_panel(self, calls: list[ToolCall]):
        """A new form panel (ipywidgets) that answers these calls through this session: the
        tool schemas and the proposals of handlers and mocks filled in, closed once the calls
        are answered by any route or the session ends."""
        from .render.tool_form import ToolCallPanel

        schemas = {c.id: self.client.tool_schema(self.app, c.tool or c.name) for c in calls}
        proposals = {c.id: p.response for c in calls if (p := self.tools.proposals.get(c.id)) is not None}
        handlers = {c.id: next((fn for name, fn in self.tools.handlers.items() if same_tool(name, c)), None) for c in calls}
        panel = ToolCallPanel(calls, lambda responses: self.respond(responses, how="form"), schemas, proposals, handlers)
        self.watch(panel)
        self._sync(panel)
        return panel

    def panel_for(self, turn: Turn):
        """The one form panel for a turn's calls that are still pending, or None."""
        pending = self.pending
        calls = [c for c in turn.tool_calls if c.id in pending]
        if not calls:
            return None
        cached = self._panels.get(id(turn))
        if cached is None or cached[0] is not turn:  # (the turn is kept with it, so its id stays its own)
            cached = self._panels[id(turn)] = (turn, self.tool_panel(calls))
        return cached[1]

    def watch(self, view) -> None:
        """`view.sync(pending_ids, ended, answered_how)` runs after every turn this session keeps
        (a tool-call form disables itself once its calls are answered, by any route, or the session ends)."""
        self._views.add(view)

    def _sync(self, view) -> None:
        how = {call_id: record.how for call_id, record in self.tools.records.items()}
        view.sync(set(self.pending), self.ended, how)

    def _changed(self) -> None:
        for view in list(self._views):
            self._sync(view)

    def _audio_format(self, turn: Turn) -> None:
        audio = self.config.get("output_audio_config")
        if audio:
            get = audio.get if isinstance(audio, dict) else lambda k, d=None: getattr(audio, k, d)
            encoding = get("audio_encoding", None)
            turn.audio_encoding = getattr(encoding, "name", encoding) or turn.audio_encoding
            turn.audio_sample_rate = int(get("sample_rate_hertz", 0) or turn.audio_sample_rate)

    # -- voice ----------------------------------------------------------------------

    def live(self, input_audio: Any = None, output_audio: Any = None, chunk_ms: int = 100):
        """A BidiRunSession context manager: send_audio / send_text / send_dtmf / send_event,
        and next_turn() (or iterate) for Turns as they complete. Formats are
        {"audio_encoding": "LINEAR16" | "MULAW" | "ALAW", "sample_rate_hertz": 8000 ... 48000}."""
        from .live import LiveSession

        return LiveSession(self, input_audio, output_audio, chunk_ms)

    def say(self, text: str, input_audio: Any = None, output_audio: Any = None, realtime: bool = False) -> "LiveTurn":
        """Speak `text` (synthesized offline with the same TTS the emulator uses) as one audio turn."""
        with self.live(input_audio, output_audio) as live:
            live.say(text, realtime=realtime)
            return live.next_turn()

    def send_audio(self, source: Any, input_audio: Any = None, output_audio: Any = None, realtime: bool = False) -> "LiveTurn":
        """One audio turn over BidiRunSession from a file, an array or bytes."""
        with self.live(input_audio, output_audio) as live:
            live.send_audio(source, realtime=realtime)
            return live.next_turn()

    # -- fork and replay -----------------------------------------------------------

    def history_messages(self, at_turn: int | None = None) -> list[dict]:
        """Turns 1..at_turn as CES Messages (JSON), for SessionConfig.historical_contexts."""
        turns = [t for t in self.turns if at_turn is None or t.index <= at_turn]
        messages: list[dict] = []
        for turn in turns:
            source = turn.messages or io_messages(turn)
            messages.extend(m.to_dict() if isinstance(m, Message) else m for m in source)
        return messages

    def fork(self, at_turn: int, session_id: str | None = None, **config: Any) -> "Session":
        """A new session whose historical_contexts reproduce turns 1..at_turn of this one."""
        if not any(t.index == at_turn for t in self.turns):
            raise ValueError(f"no turn {at_turn} to fork at; this session has turns {[t.index for t in self.turns]}")
        merged = {**self.config, **config, "historical_contexts": self.history_messages(at_turn)}
        fork = Session(self.client, self.app, session_id=session_id, tools=self.tools, **merged)
        fork.forked_from = (self.name, at_turn)
        return fork

    def replay(self, transcript: Transcript) -> Transcript:
        """Send a transcript's user inputs again, in order; answer tool calls with the responses
        it recorded (matched by tool name, in order). Returns this session's new transcript."""
        recorded: dict[str, list[dict]] = {}
        names = {c.id: c.name for t in transcript.turns for c in t.tool_calls}
        for turn in transcript.turns:
            for item in turn.inputs:
                if item.kind == "tool_responses":
                    for r in item.value:
                        recorded.setdefault(names.get(r.id) or r.display_name or r.tool.rsplit("/", 1)[-1], []).append(r.response)
        start = len(self.turns)
        for turn in transcript.turns:
            inputs = _replayable(turn)
            if not inputs:
                continue  # a turn of tool responses: answered below, as calls come
            self.send(**inputs)
            while self.pending:
                answers = {}
                for call_id, call in self.pending.items():
                    queue = recorded.get(call.name) or []
                    if not queue:
                        break
                    answers[call_id] = queue.pop(0)
                if len(answers) != len(self.pending):
                    break  # no recorded answer: leave the calls pending, as the original did
                self.respond(answers, how="replay")
        return Transcript(self.turns[start:], session=self.name, app=self.app)

    # -- history -------------------------------------------------------------------

    @property
    def transcript(self) -> Transcript:
        return Transcript(list(self.turns), session=self.name, app=self.app)

    def save(self, path: str | Path) -> Path:
        """Write the session as a transcript JSON file; `Transcript.load(path)` reads it back."""
        return self.transcript.save(path)

    def to_golden(self, path: str | Path | None = None, **options: Any) -> str:
        """The session as a golden (see `Transcript.to_golden`)."""
        return self.transcript.to_golden(path, **options)

    @property
    def ended(self) -> bool:
        return any(t.ended for t in self.turns)

    def __repr__(self) -> str:
        state = "ended" if self.ended else (f"{len(self.pending)} tool call(s) pending" if self.pending else "open")
        return f"<ces_nb.Session {self.name}: {len(self.turns)} turn(s), {state}>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import session_html

        return {"text/plain": repr(self), "text/html": session_html(self)}


def _replayable(turn: Turn) -> dict[str, Any]:
    """A recorded turn's user inputs as send() keyword arguments (tool responses left out)."""
    inputs: dict[str, Any] = {}
    texts = []
    for item in turn.inputs:
        if item.kind == "text":
            texts.append(item.value)
        elif item.kind in ("dtmf", "event"):
            inputs[item.kind] = item.value
        elif item.kind == "variables":
            inputs["variables"] = {**inputs.get("variables", {}), **item.value}
        elif item.kind in ("image", "blob"):
            inputs[item.kind] = item.value
    if texts:
        inputs["text"] = " ".join(texts)
    return inputs


class LiveTurn:
    """A Turn paired with its Session: reads as the Turn (every attribute, `to_dict`, equality,
    its static HTML and text), and in a notebook also shows the form that answers the turn's
    pending client tool calls through the session. `.record` is the plain Turn."""

    __slots__ = ("record", "session")

    def __init__(self, record: Turn, session: Session):
        object.__setattr__(self, "record", record)
        object.__setattr__(self, "session", session)

    def __getattr__(self, name: str) -> Any:
        if name in LiveTurn.__slots__:  # not set yet (copy, pickle): never recurse looking for it
            raise AttributeError(name)
        return getattr(self.record, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in LiveTurn.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.record, name, value)

    def __eq__(self, other: Any) -> bool:
        return self.record == (other.record if isinstance(other, LiveTurn) else other)

    __hash__ = None  # as the Turn's: a mutable record

    def panel(self):
        """The form panel for the pending calls of this turn's last answer (one per turn), or None."""
        return self.session.panel_for(self.record.last)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return self.record._repr_mimebundle_(include, exclude)

    def _ipython_display_(self) -> None:
        """The static turn, then (unanswered client calls) the tool-call form as its own output,
        so exports without widgets keep the static table."""
        display(self._repr_mimebundle_(), raw=True)
        panel = self.panel()
        if panel is not None:
            display(panel)

    def __repr__(self) -> str:
        return repr(self.record)


__all__ = ["Session", "LiveTurn", "CesError"]
