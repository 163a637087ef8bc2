"""An app export running on google-adk: one AppRuntime per loaded app.

`run_turn` takes the SessionInputs of one RunSession request (or one bidi
turn) and yields SessionOutputs as they happen. The last output carries
turn_completed and diagnostic_info (the turn's messages and root span). Each
turn is also stored on the ADK session, so AgentService can list and read it
back as a Conversation after a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import grpc
from google.adk.agents import LlmAgent, RunConfig
from google.adk.agents.callback_context import CallbackContext
from google.adk.agents.run_config import StreamingMode
from google.adk.errors import StaleSessionError
from google.adk.events import Event, EventActions
from google.adk.models.llm_response import LlmResponse
from google.adk.plugins.base_plugin import BasePlugin
from google.adk.runners import Runner
from google.adk.sessions import BaseSessionService, Session
from google.adk.telemetry.context import TelemetryConfig
from google.cloud import ces_v1
from google.genai import types
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from .agent_tools import USE_TOOL_FAKES_KEY, CesTool, SearchTool, build_tool, search_suggestions_html
from .documents import DocumentIndex
from .errors import EmulatorError, quote
from .fair_share import checkpoint, elsewhere
from .history_window import PRIOR_HISTORY, HistoryDigest, window_start
from .input_limits import MAX_INPUT_BYTES, byte_size, input_size_error, text_length_error
from .export import LoadedApp, slugify, toolset_tool_names
from .toolsets import transfer_rules_plugin
from .playback import TRANSFER_TOOL, PlaybackLlm, adk_name, fill_placeholders
from .python_runner import PythonToolRunner
from .scripts import load_scripts
from .tracing import TURN_SPAN, ToolRecord, build_root_span, tracer, turn_router
from .turn_store import TurnStore

log = logging.getLogger("ces_nb.emulator")


def _skip_failing_a2a_import() -> None:
    """ADK tries `google.adk.agents.remote_a2a_agent` on every workflow node it builds (several a
    turn), and without the optional a2a package that import fails each time, after searching
    the path anew: 7.6% of a turn's samples. A None in sys.modules makes it fail at once."""
    name = "google.adk.agents.remote_a2a_agent"
    try:
        __import__(name)
    except ImportError:
        sys.modules[name] = None  # type: ignore[assignment]


_skip_failing_a2a_import()
# ADK advises a Gemini context cache on every multi-agent app; meaningless for playback.
logging.getLogger("google_adk.google.adk.runners").setLevel(logging.ERROR)

USER_ID = "ces"
# Session-state key for the emulator's own record of the conversation.
META_KEY = "_ces"
# ADK 2's default, experimental GenAI semconv serializes every request's messages and tool
# definitions onto its spans: about 0.6 ms a turn that build_root_span never reads. The stable
# convention keeps every attribute it does read (operation, agent, model, tokens, tool name and
# call id). ADK_TELEMETRY_IGNORE_RUN_CONFIG=true puts ADK's own env settings back in charge.
TELEMETRY = TelemetryConfig(genai_semconv_stability_opt_in="stable")
# The turn's outputs and records are built as raw protobuf messages, wrapped for proto-plus
# callers only at the end: proto-plus marshalling cost about 0.3 ms a turn.
OutputPb = ces_v1.SessionOutput.pb()
DiagnosticPb = ces_v1.SessionOutput.DiagnosticInfo.pb()
MessagePb = ces_v1.Message.pb()
ChunkPb = ces_v1.Chunk.pb()
ToolCallPb = ces_v1.ToolCall.pb()
ToolResponsePb = ces_v1.ToolResponse.pb()
TurnPb = ces_v1.Conversation.Turn.pb()
# A turn's record is written from its diagnostic's serialized messages (runtime._turn): the field
# that holds them must have the same number in both messages.
TURN_MESSAGES_MATCH = (DiagnosticPb.DESCRIPTOR.fields_by_name["messages"].number
                       == TurnPb.DESCRIPTOR.fields_by_name["messages"].number)
if not TURN_MESSAGES_MATCH:
    raise ImportError("google-cloud-ces numbers DiagnosticInfo.messages and Conversation.Turn.messages differently: "
                      "ces_nb's emulator writes turn records from the one as the other; pin google-cloud-ces to a release it supports")
# Live session objects kept between turns; beyond this, the least recently used is dropped
# (the store has everything), so a long-running emulator's memory stays bounded.
MAX_LIVE_SESSIONS = 256
# Inputs at least this big (serialized) are turned into ADK's message off the event loop, so
# other sessions' turns go on meanwhile.
OFF_LOOP_INPUT_BYTES = 32 * 1024


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class TurnState:
    """Per-session bookkeeping that does not belong in ADK state."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fragments: list[ces_v1.SessionInput] = field(default_factory=list)
    # The live session object as the runner left it: reading it back from the
    # store (a deep copy, or a database read) costs more than the turn itself.
    session: Session | None = None
    # What the playback model reads of the events before the runner's window (history_window.py).
    digest: HistoryDigest | None = None
    pending: "PendingCalls" = field(default_factory=lambda: PendingCalls())


class _SessionCapture(BasePlugin):
    """Hands the runner's up-to-date session object to the emulator after each run."""

    def __init__(self, runtime: "AppRuntime"):
        super().__init__(name="ces_session_capture")
        self.runtime = runtime

    async def after_run_callback(self, *, invocation_context) -> None:
        self.runtime.keep_live(self.runtime.turns.live(invocation_context.session))


class AppRuntime:
    def __init__(self, app: LoadedApp, session_service: BaseSessionService, runner: PythonToolRunner, model=None):
        self.app = app
        # Turns reach the store whole: a turn cut short leaves nothing of itself there.
        self.session_service = self.turns = TurnStore(session_service)
        self.python_runner = runner
        self.model_name = model  # --model: an id ADK resolves (Gemini), or a LiteLlm (registry.build_model)
        # Turns run on a window of the session (history_window.py); a real model reads it all.
        self.windowed = not model
        # Other processes (`--workers`) write the same sessions: a cached live session is used only
        # while the store's revision of it is still its own.
        self.shared_store = False
        self.indexes: dict[str, DocumentIndex] = {}
        self.agent_names = {display: adk_name(display) for display in app.agents}
        self.display_of_agent = {v: k for k, v in self.agent_names.items()}
        self.tools: dict[str, CesTool] = {}
        root_agent = app.root_agent
        self.scripts = load_scripts(app)  # examples/, instruction few-shots, goldens, --examples files
        self.root = self._build_agent(root_agent, set())
        self._sessions: dict[str, TurnState] = {}
        self._live: OrderedDict[str, None] = OrderedDict()  # sessions whose live object is cached, oldest first
        self.runner = Runner(app_name=app.app_id, agent=self.root, session_service=self.turns,
                             plugins=[_SessionCapture(self), *filter(None, [transfer_rules_plugin(app, self.agent_names)])])

    # -- building -----------------------------------------------------------------

    def _build_agent(self, agent: ces_v1.Agent, seen: set[str]) -> LlmAgent:
        seen = seen | {agent.display_name}
        tools = []
        for ref in [*agent.tools, *toolset_tool_names(self.app, agent)]:  # toolset tools: <toolset>_<toolId>
            tool = self.tools.get(ref) or build_tool(self.app, ref, self.python_runner, self.indexes)
            self.tools[ref] = tool
            tools.append(tool)
        children = [self._build_agent(self.app.agents[c], seen) for c in agent.child_agents if c not in seen]
        instruction = "\n\n".join(x for x in (self.app.app.global_instruction, agent.instruction) if x)
        # CES callbacks and guardrails, as ADK callbacks: only at the stages something runs at.
        callbacks = self._callbacks_for(agent)
        if callbacks is not None and "end_session" not in self.tools:  # Part.from_end_session needs the tool
            self.tools["end_session"] = build_tool(self.app, "end_session", self.python_runner, self.indexes)
        if callbacks is not None and self.tools["end_session"] not in tools:
            tools.append(self.tools["end_session"])
        return LlmAgent(
            name=self.agent_names[agent.display_name],
            description=agent.description,
            # A callable instruction is passed through as is: CES placeholders
            # like {@TOOL: x} are not ADK state templates. {variable}s take the session's values.
            instruction=(lambda ctx, text=instruction: _fill_instruction(text, ctx)) if "{" in instruction
            else (lambda _ctx, text=instruction: text),
            model=self._model_for(agent),
            tools=tools,
            sub_agents=children,
            **(callbacks.adk_callbacks(self._fill_variables) if callbacks is not None
               else {"after_model_callback": self._fill_variables}),
        )

    def _callbacks_for(self, agent: ces_v1.Agent):
        """The agent's CES callbacks and guardrails (callbacks.py, guardrails.py), or None."""
        from .callbacks import AgentCallbacks, CallbackHost, Names
        from .guardrails import AppGuardrails

        if getattr(self, "_guardrails", None) is None:
            host = CallbackHost(self.app, self.python_runner, Names(self.agent_names, self.tools), self.tools)
            self._guardrails = AppGuardrails(self.app, host)
        guardrails = self._guardrails.for_agent(agent)
        if guardrails is None and not AgentCallbacks.wanted(agent):
            return None
        return AgentCallbacks(self._guardrails.host, agent, guardrails)

    def _model_for(self, agent: ces_v1.Agent):
        if self.model_name:
            return self.model_name  # a real model: every agent talks to it, as on CES
        # No script matches: say so, and how to add one. Never a quote of the instruction (a real
        # one opens with XML or a comment banner).
        no_script = (
            "Sorry, I didn't catch that: the emulator has no script for that message yet. Add an example "
            "(examples/), a golden (evals/goldens/*.yaml) or a recorded transcript (ces-nb emulator --examples FILE)."
        )
        return PlaybackLlm(
            agent_display_name=agent.display_name,
            fallback_text=no_script,
            scripts=self.scripts,
            agent_names=self.agent_names,
        )

    def _fill_variables(self, callback_context: CallbackContext, llm_response: LlmResponse) -> LlmResponse | None:
        """Fills `{variable}` placeholders the playback model left, from session state. A real
        model's answer is left as it said it: CES fills variables in instructions, not in answers."""
        if self.model_name or not llm_response.content or not llm_response.content.parts:
            return None
        state = {k: v for k, v in callback_context.state.to_dict().items() if not k.startswith("_")}
        for part in llm_response.content.parts:
            if part.text:
                part.text = fill_placeholders(part.text, state)
            if part.function_call and part.function_call.args:
                part.function_call.args = fill_placeholders(dict(part.function_call.args), state)
        if llm_response.custom_metadata and "ces_payloads" in llm_response.custom_metadata:
            llm_response.custom_metadata["ces_payloads"] = fill_placeholders(llm_response.custom_metadata["ces_payloads"], state)
        return None

    # -- sessions -----------------------------------------------------------------

    def default_variables(self) -> dict[str, Any]:
        out = {}
        for decl in self.app.app.variable_declarations:
            pb = ces_v1.Schema.pb(decl.schema)
            out[decl.name] = json_format.MessageToDict(pb.default) if pb.HasField("default") else None
        return out

    def forget(self, session_id: str) -> None:
        """Drop cached state for a session deleted from the store."""
        self._sessions.pop(session_id, None)
        self._live.pop(session_id, None)

    def _drop_live(self, session_id: str) -> None:
        state = self._sessions.get(session_id)
        if state is not None:
            state.session = None
        self._live.pop(session_id, None)

    def keep_live(self, session: Session) -> None:
        """Cache the runner's session object for the next turn, for the most recent
        MAX_LIVE_SESSIONS sessions; an older one is read back from the store when it speaks again."""
        self._sessions.setdefault(session.id, TurnState()).session = session
        self._live[session.id] = None
        self._live.move_to_end(session.id)
        while len(self._live) > MAX_LIVE_SESSIONS:
            oldest, _ = self._live.popitem(last=False)
            state = self._sessions[oldest]  # forget() drops both entries together
            if state.lock.locked() or state.fragments:
                state.session = None  # a turn is running or waiting for fragments: keep its lock
            else:
                del self._sessions[oldest]

    async def get_or_create_session(self, session_id: str, config: ces_v1.SessionConfig) -> Session:
        cached = self._sessions.get(session_id)
        if cached is not None and cached.session is not None:
            if not self.shared_store or await self._still_current(cached.session):
                return cached.session
            self._drop_live(session_id)  # another worker moved it on: read it again
        session = await self.session_service.get_session(app_name=self.app.app_id, user_id=USER_ID, session_id=session_id)
        if session is not None:
            return session
        # A display name, or the resource name ListAgents returns (projects/../agents/<slug of it>).
        entry = config.entry_agent.rsplit("/", 1)[-1] if config.entry_agent else ""
        entry = next((d for d in self.app.agents if entry in (d, slugify(d))), entry)
        if entry and entry not in self.app.agents:
            raise EmulatorError.invalid_argument(
                f"entry_agent {quote(config.entry_agent)} is not an agent of app {self.app.app_id!r}; "
                f"agents: {', '.join(sorted(self.app.agents))}"
            )
        state = {k: v for k, v in self.default_variables().items() if v is not None}
        state[META_KEY] = {
            "start_time": now_iso(),
            "end_time": now_iso(),
            "turn_count": 0,
            "input_types": [],
            "entry_agent": entry or self.app.app.root_agent,
            "source": "LIVE",
            "channel": "TEXT",
            "deployment": config.deployment,
        }
        await checkpoint()
        session = await self.session_service.create_session(
            app_name=self.app.app_id, user_id=USER_ID, session_id=session_id, state=state
        )
        if entry and entry != self.app.app.root_agent:
            # The runner continues with the agent that spoke last: start there.
            await self.session_service.append_event(session, Event(author=self.agent_names[entry], invocation_id="ces-entry"))
        if config.historical_contexts:
            await self._replay_history(session, config.historical_contexts, entry or self.app.app.root_agent)
        return session

    async def _still_current(self, session: Session) -> bool:
        revision = getattr(self.turns.store, "revision", None)  # batching_store.TurnBatchingStore
        return revision is None or await revision(session) == session._storage_update_marker

    async def _replay_history(self, session: Session, messages, agent: str) -> None:
        """historical_contexts become the session's opening events, so the agents (and the
        playback model) carry on from them as if they had happened here."""
        for n, message in enumerate(messages):
            parts: list[types.Part] = []
            delta: dict[str, Any] = {}
            role = "user" if message.role.lower() == "user" else "model"
            for chunk in message.chunks:
                kind = ces_v1.Chunk.pb(chunk).WhichOneof("data")
                if kind in ("text", "transcript"):
                    parts.append(types.Part(text=getattr(chunk, kind)))
                elif kind == "tool_call":
                    name = self._tool_adk_name(chunk.tool_call.display_name or chunk.tool_call.tool)
                    args = json_format.MessageToDict(ces_v1.ToolCall.pb(chunk.tool_call).args)
                    parts.append(types.Part(function_call=types.FunctionCall(id=chunk.tool_call.id or None, name=name, args=args)))
                elif kind == "tool_response":
                    name = self._tool_adk_name(chunk.tool_response.display_name or chunk.tool_response.tool)
                    body = json_format.MessageToDict(ces_v1.ToolResponse.pb(chunk.tool_response).response)
                    parts.append(types.Part(function_response=types.FunctionResponse(id=chunk.tool_response.id or None, name=name, response=body)))
                elif kind == "agent_transfer":
                    target = (chunk.agent_transfer.display_name or chunk.agent_transfer.target_agent).rsplit("/", 1)[-1]
                    target = next((d for d in self.app.agents if d == target or adk_name(d) == adk_name(target)), agent)
                    parts.append(types.Part(function_call=types.FunctionCall(name=TRANSFER_TOOL, args={"agent_name": self.agent_names[target]})))
                    agent = target
                elif kind in ("updated_variables", "default_variables"):
                    delta.update(json_format.MessageToDict(getattr(ces_v1.Chunk.pb(chunk), kind)))
            if not parts and not delta:
                continue
            author = "user" if role == "user" else self.agent_names.get(agent, adk_name(agent))
            await self.session_service.append_event(session, Event(
                author=author, invocation_id=f"ces-history-{n}",
                content=types.Content(role=role, parts=parts) if parts else None,
                actions=EventActions(state_delta=delta),
            ))

    def _tool_adk_name(self, tool: str) -> str:
        short = tool.rsplit("/", 1)[-1]
        return next((t.name for d, t in self.tools.items() if short in (d, t.name)), adk_name(short))

    # -- turns --------------------------------------------------------------------

    async def run_turn(
        self,
        session_id: str,
        config: ces_v1.SessionConfig,
        inputs: list[ces_v1.SessionInput],
        stream_text: bool = False,
        turn_started_ns: int | None = None,
    ) -> AsyncIterator[ces_v1.SessionOutput]:
        """Yields the turn's outputs as they happen; raises EmulatorError for bad input before any output."""
        state = self._sessions.setdefault(session_id, TurnState())
        await checkpoint()
        async with state.lock:
            session, inputs = await self._begin(state, session_id, config, inputs)
            if session is None:
                return
            queue: asyncio.Queue = asyncio.Queue()
            started = turn_started_ns or time.time_ns()
            task = asyncio.create_task(self._produce(session, config, inputs, stream_text, started, queue))
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    async def run_turn_to_end(
        self, session_id: str, config: ces_v1.SessionConfig, inputs: list[ces_v1.SessionInput], turn_started_ns: int | None = None
    ) -> list[ces_v1.SessionOutput]:
        """The whole turn at once (unary RunSession): no task or queue between producer and caller."""
        state = self._sessions.setdefault(session_id, TurnState())
        await checkpoint()
        async with state.lock:
            session, inputs = await self._begin(state, session_id, config, inputs)
            if session is None:
                return []
            sink = _ListSink()
            await self._produce(session, config, inputs, False, turn_started_ns or time.time_ns(), sink)
            if _is_stale(sink.error):
                # Another worker stored a turn of this session meanwhile. Nothing of this one was
                # stored or sent: run it once more on the session as stored now (ADK's optimistic
                # concurrency, retried).
                session = await self.get_or_create_session(session_id, config)
                sink = _ListSink()
                await self._produce(session, config, inputs, False, turn_started_ns or time.time_ns(), sink)
            if sink.error is not None:
                raise sink.error
            return sink.outputs

    async def _begin(self, state: TurnState, session_id, config, inputs):
        """Validate, buffer will_continue fragments; (None, ...) when the turn waits for more."""
        _validate_inputs(inputs)
        if inputs and all(i.will_continue for i in inputs):
            state.fragments.extend(inputs)
            if sum(ces_v1.SessionInput.pb(i).ByteSize() for i in state.fragments) > MAX_INPUT_BYTES:
                state.fragments.clear()  # nothing of a turn that can't run is kept
                raise EmulatorError.invalid_argument(
                    f"the will_continue fragments of this turn add up to more than {byte_size(MAX_INPUT_BYTES)}; "
                    f"they were dropped: send shorter fragments, then one without will_continue"
                )
            return None, inputs
        inputs = _merge_fragments(state.fragments + list(inputs))
        state.fragments.clear()
        for i, item in enumerate(inputs):  # fragments joined may pass a limit each one kept
            _check_size(f"inputs[{i}] (with the will_continue fragments before it)", item,
                        ces_v1.SessionInput.pb(item).WhichOneof("input_type"))
        session = await self.get_or_create_session(session_id, config)
        ended = session.state.get(META_KEY, {}).get("ended_turn")
        if ended:
            # As CES documents for EndSession: the agent processes no further input.
            raise EmulatorError.failed_precondition(
                f"session {quote(session_id)} ended in turn {ended} (end_session): the agent takes no more input; "
                f"start a new session (another session id) to talk again"
            )
        return session, inputs

    async def _produce(self, session, config, inputs, stream_text, started_ns, queue: asyncio.Queue) -> None:
        router = turn_router()
        span = tracer().start_span(TURN_SPAN, start_time=started_ns)
        router.open(span.get_span_context().trace_id)
        # Read before the turn begins: every event up to here is stored (see PendingCalls).
        pending = self._sessions.setdefault(session.id, TurnState()).pending.update(session.events)
        window, digest = self._window(session, pending)
        self.turns.begin(session, window)
        history_token = PRIOR_HISTORY.set(digest)
        try:
            with trace.use_span(span, end_on_exit=False):
                await self._turn(session, config, inputs, stream_text, started_ns, span, queue, pending)
        except BaseException as exc:  # handed to the consumer, never lost in the task
            # Nothing of this turn was stored; the live object holds it, so the next turn
            # reads the session back from the store instead.
            self.turns.abort(session.id)
            self._drop_live(session.id)
            span.end()
            router.close(span.get_span_context().trace_id)
            if isinstance(exc, StaleSessionError):
                exc = EmulatorError.aborted(
                    "this session changed in another emulator worker (or another client of the store) during "
                    "the turn; nothing of the turn was stored: send it again")
            await queue.put(exc if isinstance(exc, Exception) else EmulatorError.internal("turn cancelled"))
            return
        finally:
            PRIOR_HISTORY.reset(history_token)
        await queue.put(None)

    def _window(self, session: Session, pending: dict[str, str]) -> tuple[int, HistoryDigest | None]:
        """Where the runner's view of `session` starts, and the digest of what comes before it
        (history_window.py). A real model sees the whole session."""
        if not self.windowed:
            return 0, None
        start = window_start(session.events, set(pending))
        if not start:
            return 0, None
        state = self._sessions.setdefault(session.id, TurnState())
        if state.digest is None or state.digest.upto > start:
            state.digest = HistoryDigest()
        state.digest.extend(session.events, start)
        return start, state.digest

    async def _turn(self, session: Session, config, inputs, stream_text, started_ns, span, queue, pending: dict[str, str]) -> None:
        await checkpoint()
        meta = dict(session.state.get(META_KEY, {}))
        turn_index = int(meta.get("turn_count", 0)) + 1
        if sum(ces_v1.SessionInput.pb(item).ByteSize() for item in inputs) < OFF_LOOP_INPUT_BYTES:
            message, variables, input_types = self._new_message(inputs, pending)
        else:  # 256 KiB of variables take ~6 ms of protobuf's pure-Python MessageToDict: not on the loop
            async with elsewhere():
                message, variables, input_types = await asyncio.to_thread(self._new_message, inputs, pending)

        state_delta: dict[str, Any] = dict(variables)
        if config.use_tool_fakes != bool(session.state.get(USE_TOOL_FAKES_KEY, False)):
            state_delta[USE_TOOL_FAKES_KEY] = config.use_tool_fakes
        if state_delta:
            await self.session_service.append_event(
                session, Event(author="user", invocation_id=f"ces-vars-{turn_index}", actions=EventActions(state_delta=state_delta))
            )
            await checkpoint()  # 256 KiB of variables take ADK a few ms to apply: a step of its own

        out = _OutputStream(turn_index, queue)
        first_output_ns: list[int] = []
        records: dict[str, ToolRecord] = {}
        # The user's message is built in the diagnostic itself: each copy of 256 KiB of variables
        # costs the loop ~0.3 ms (protobuf copies a message field on assignment).
        diagnostic = DiagnosticPb()
        _add_input_chunks(diagnostic.messages.add(role="user"), inputs)
        await checkpoint()
        agent_msgs: list = []  # MessagePb
        grounding: list = []  # OutputPb: citations / suggestions wait for the text they ground

        if message is not None:
            run_config = RunConfig(streaming_mode=StreamingMode.SSE if stream_text else StreamingMode.NONE, telemetry=TELEMETRY)
            streamed_text = False
            # aclosing: a cancel at the checkpoint closes ADK's generator here, in this task
            async with contextlib.aclosing(self.runner.run_async(
                user_id=USER_ID, session_id=session.id, new_message=message, run_config=run_config
            )) as events:
                async for event in events:
                    await checkpoint()
                    agent = self.display_of_agent.get(event.author, event.author)
                    if event.partial:
                        for part in (event.content.parts if event.content else []):
                            if part.text:
                                streamed_text = True
                                first_output_ns or first_output_ns.append(time.time_ns())
                                await out.send(OutputPb(text=part.text))
                        continue
                    chunks, outputs = self._event_outputs(event, agent, records, grounding, skip_text=streamed_text)
                    streamed_text = False
                    if chunks:
                        agent_msgs.append(MessagePb(role="agent", chunks=chunks))
                    for output in outputs:
                        first_output_ns or first_output_ns.append(time.time_ns())
                        await out.send(output)
        for output in grounding:
            await out.send(output)
        await checkpoint()

        # The turn span ends here so the root span covers the whole turn.
        span.end()
        spans = turn_router().close(span.get_span_context().trace_id)
        perceived = (first_output_ns[0] - started_ns) if first_output_ns else None
        root_span = build_root_span(span, spans, self.display_of_agent, records, perceived)
        diagnostic.messages.extend(agent_msgs)
        # The stored record is a Conversation.Turn: its messages' bytes are the diagnostic's
        # (the same field number: TURN_MESSAGES_MATCH), its root span's follow; protobuf reads
        # two serialized messages one after the other as the two merged.
        messages_bytes = diagnostic.SerializeToString()
        diagnostic.root_span.CopyFrom(root_span)

        if out.ended:
            meta["ended_turn"] = turn_index
        meta.update(
            turn_count=turn_index,
            end_time=now_iso(),
            input_types=sorted(set(meta.get("input_types", [])) | set(input_types)),
        )
        # One base64 string of the serialized Conversation.Turn: ADK deep-copies the session on
        # every read (a string copies for free), and protobuf writes bytes far faster than JSON.
        await checkpoint()
        record = base64.b64encode(messages_bytes + TurnPb(root_span=root_span).SerializeToString()).decode("ascii")
        live = self._sessions[session.id].session or session
        await checkpoint()
        await self.session_service.append_event(
            live,
            Event(
                # Authored as "user" so ADK's agent routing passes over it.
                author="user",
                invocation_id=f"ces-turn-{turn_index}",
                custom_metadata={"ces_turn": record},
                actions=EventActions(state_delta={META_KEY: meta}),
            ),
        )
        await self.turns.commit(session.id)  # before the client hears the turn completed
        await out.finish(diagnostic)

    def _new_message(self, inputs, pending: dict[str, str]) -> tuple[types.Content | None, dict, list[str]]:
        """SessionInputs -> one ADK user Content (None when only variables were sent)."""
        parts: list[types.Part] = []
        variables: dict[str, Any] = {}
        input_types: list[str] = []
        for item in inputs:
            kind = ces_v1.SessionInput.pb(item).WhichOneof("input_type")
            if kind == "text":
                parts.append(types.Part(text=item.text))
                input_types.append("INPUT_TYPE_TEXT")
            elif kind == "dtmf":
                parts.append(types.Part(text=f"dtmf: {item.dtmf}"))
                input_types.append("INPUT_TYPE_TEXT")
            elif kind == "event":
                parts.append(types.Part(text=f"event: {item.event.event}"))
                input_types.append("INPUT_TYPE_EVENT")
            elif kind in ("image", "blob"):
                media = item.image if kind == "image" else item.blob
                parts.append(types.Part(inline_data=types.Blob(mime_type=media.mime_type, data=media.data)))
                input_types.append("INPUT_TYPE_IMAGE" if kind == "image" else "INPUT_TYPE_BLOB")
            elif kind == "variables":
                variables.update(json_format.MessageToDict(ces_v1.SessionInput.pb(item).variables))
                input_types.append("INPUT_TYPE_VARIABLES")
            elif kind == "tool_responses":
                for response in item.tool_responses.tool_responses:
                    if response.id not in pending:
                        ids = ", ".join(sorted(pending)) or "none"
                        raise EmulatorError.invalid_argument(
                            f"tool response id {quote(response.id)} matches no pending tool call; pending ids: {ids}"
                        )
                    body = json_format.MessageToDict(ces_v1.ToolResponse.pb(response).response)
                    parts.append(types.Part(function_response=types.FunctionResponse(id=response.id, name=pending[response.id], response=body)))
                input_types.append("INPUT_TYPE_TOOL_RESPONSE")
            elif kind == "audio":
                raise EmulatorError.unimplemented(
                    "audio input is served by BidiRunSession with input_audio_config; RunSession takes text"
                )
        return (types.Content(role="user", parts=parts) if parts else None), variables, input_types

    def _event_outputs(self, event: Event, agent: str, records, grounding, skip_text: bool):
        """One ADK event -> diagnostic chunks (ChunkPb) and SessionOutputs (OutputPb), in order."""
        chunks: list = []
        outputs: list = []
        long_running = set(event.long_running_tool_ids or ())
        client_calls: list = []
        for part in (event.content.parts if event.content else []):
            if part.text and not part.thought:
                chunks.append(ChunkPb(text=part.text))
                if not skip_text:
                    outputs.append(OutputPb(text=part.text))
                outputs.extend(grounding)
                grounding.clear()
            elif part.function_call:
                call = part.function_call
                args = dict(call.args or {})
                if call.name == TRANSFER_TOOL:
                    target = self.display_of_agent.get(str(args.get("agent_name")), str(args.get("agent_name")))
                    chunks.append(ChunkPb(agent_transfer={"target_agent": target, "display_name": target}))
                    continue
                tool = self._tool_by_adk_name(call.name)
                display = tool.display_name if tool else call.name
                tool_call = ToolCallPb(id=call.id or "", tool=display, display_name=display, args=to_struct(args))
                records[call.id or display] = ToolRecord(name=display, adk_name=call.name, args=args)
                chunks.append(ChunkPb(tool_call=tool_call))
                if call.name == "end_session":
                    outputs.append(OutputPb(end_session={"metadata": to_struct(args)}))
                elif call.id in long_running:
                    client_calls.append(tool_call)
            elif part.function_response:
                resp = part.function_response
                body = resp.response if isinstance(resp.response, dict) else {"result": resp.response}
                if resp.name == TRANSFER_TOOL:
                    continue
                tool = self._tool_by_adk_name(resp.name)
                display = tool.display_name if tool else resp.name
                if resp.id in records:
                    records[resp.id].response = body
                chunks.append(ChunkPb(tool_response=ToolResponsePb(id=resp.id or "", tool=display, display_name=display, response=to_struct(body))))
                if isinstance(tool, SearchTool):
                    grounding.append(grounding_output(tool, body))
        if client_calls:
            outputs.append(OutputPb(tool_calls={"tool_calls": client_calls}))
        for payload in (event.custom_metadata or {}).get("ces_payloads", []):
            struct = to_struct(payload)
            chunks.append(ChunkPb(payload=struct))
            outputs.append(OutputPb(payload=struct))
        delta = {k: v for k, v in (event.actions.state_delta if event.actions else {}).items() if not k.startswith(("_", "temp:"))}
        if delta:
            chunks.append(ChunkPb(updated_variables=to_struct(delta)))
        return chunks, outputs

    def _tool_by_adk_name(self, name: str) -> CesTool | None:
        return next((t for t in self.tools.values() if t.name == name), None)


def _is_stale(error: BaseException | None) -> bool:
    return isinstance(error, EmulatorError) and error.code == grpc.StatusCode.ABORTED


def _fill_instruction(text: str, ctx) -> str:
    """An instruction's `{variable}`s, from the session state (what tools and callbacks wrote)."""
    return fill_placeholders(text, {k: v for k, v in ctx.state.items() if not k.startswith("_")})


class _ListSink:
    """Quacks like the asyncio.Queue that _produce feeds, for a turn collected whole."""

    def __init__(self) -> None:
        self.outputs: list[ces_v1.SessionOutput] = []
        self.error: BaseException | None = None

    async def put(self, item) -> None:
        if isinstance(item, BaseException):
            self.error = item
        elif item is not None:
            self.outputs.append(item)


class _OutputStream:
    """Sends outputs one behind, so the last one can carry turn_completed. Takes raw OutputPb
    messages and hands the consumer proto-plus SessionOutputs (wrapped, not copied)."""

    def __init__(self, turn_index: int, queue: asyncio.Queue):
        self.turn_index = turn_index
        self.queue = queue
        self.held = None  # OutputPb
        self.ended = False  # an end_session went out

    async def send(self, output) -> None:
        output.turn_index = self.turn_index
        self.ended = self.ended or output.HasField("end_session")
        if self.held is not None:
            await self.queue.put(ces_v1.SessionOutput.wrap(self.held))
        self.held = output

    async def finish(self, diagnostic) -> None:
        last = self.held or OutputPb(turn_index=self.turn_index)
        last.turn_completed = True
        last.diagnostic_info.CopyFrom(diagnostic)
        self.held = None
        await self.queue.put(ces_v1.SessionOutput.wrap(last))


@dataclass
class PendingCalls:
    """Client tool calls still waiting for a response, read incrementally: each turn reads only
    the events since the last. It is read when a turn begins, when every event is stored, so
    a session read back from the store after an aborted turn has the same events up to `upto`."""

    upto: int = 0
    calls: dict[str, str] = field(default_factory=dict)  # id -> ADK tool name

    def update(self, events: list[Event]) -> dict[str, str]:
        if self.upto > len(events):  # not the events this was read from
            self.upto, self.calls = 0, {}
        for event in events[self.upto:]:
            for call in event.get_function_calls():
                if call.id and call.id in (event.long_running_tool_ids or ()):
                    self.calls[call.id] = call.name or ""
            for response in event.get_function_responses():
                self.calls.pop(response.id, None)
        self.upto = len(events)
        return dict(self.calls)


def pending_tool_calls(session: Session) -> dict[str, str]:
    """Long-running (client) calls still waiting for a response: id -> ADK tool name."""
    calls: dict[str, str] = {}
    answered: set[str] = set()
    for event in session.events:
        for call in event.get_function_calls():
            if call.id and call.id in (event.long_running_tool_ids or ()):
                calls[call.id] = call.name or ""
        for response in event.get_function_responses():
            if response.id:
                answered.add(response.id)
    return {i: n for i, n in calls.items() if i not in answered}


def _validate_inputs(inputs: list[ces_v1.SessionInput]) -> None:
    if not inputs:
        raise EmulatorError.invalid_argument("no inputs: send at least one SessionInput, e.g. inputs=[{'text': 'Hello'}]")
    for i, item in enumerate(inputs):
        kind = ces_v1.SessionInput.pb(item).WhichOneof("input_type")
        if kind is None:
            raise EmulatorError.invalid_argument(
                f"inputs[{i}] is empty: set one of text, dtmf, audio, tool_responses, image, blob, variables or event"
            )
        if kind == "text" and not item.text.strip() and not item.will_continue:
            raise EmulatorError.invalid_argument(f"inputs[{i}].text is blank: send some text")
        _check_size(f"inputs[{i}]", item, kind)


def _check_size(where: str, item: ces_v1.SessionInput, kind: str) -> None:
    if kind in ("text", "dtmf"):
        error = text_length_error(where, kind, len(getattr(item, kind)))
    else:
        error = input_size_error(where, kind, ces_v1.SessionInput.pb(item).ByteSize())
    if error is not None:
        raise error


def _merge_fragments(inputs: list[ces_v1.SessionInput]) -> list[ces_v1.SessionInput]:
    """will_continue fragments of text join into one text input."""
    merged: list[ces_v1.SessionInput] = []
    for item in inputs:
        kind = ces_v1.SessionInput.pb(item).WhichOneof("input_type")
        if kind == "text" and merged and ces_v1.SessionInput.pb(merged[-1]).WhichOneof("input_type") == "text" and merged[-1].will_continue:
            merged[-1] = ces_v1.SessionInput(text=" ".join((merged[-1].text.strip() + " " + item.text.strip()).split()), will_continue=item.will_continue)
        else:
            merged.append(item)  # never changed in place: a merge makes a new input
    return merged


def _add_input_chunks(message, inputs: list[ces_v1.SessionInput]) -> None:
    """The user's side of the turn, as chunks of `message` (a MessagePb)."""
    for item in inputs:
        pb = ces_v1.SessionInput.pb(item)
        kind = pb.WhichOneof("input_type")
        if kind == "text":
            message.chunks.add(text=pb.text)
        elif kind == "dtmf":
            message.chunks.add(text=f"dtmf: {pb.dtmf}")
        elif kind == "event":
            message.chunks.add(text=f"event: {pb.event.event}")
        elif kind == "image":
            message.chunks.add(image=pb.image)
        elif kind == "blob":
            message.chunks.add(blob=pb.blob)
        elif kind == "variables":
            message.chunks.add(updated_variables=pb.variables)
        elif kind == "tool_responses":
            for response in pb.tool_responses.tool_responses:
                message.chunks.add(tool_response=response)


def to_struct(values: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values or {})
    return s


def grounding_output(tool: SearchTool, body: dict):
    """The citations (data store) or search suggestions (Google search) output, as an OutputPb."""
    results = body.get("results", [])
    if tool.kind == "google_search_tool":
        query = str(body.get("query", ""))
        return OutputPb(google_search_suggestions={
            "htmls": [search_suggestions_html(query)],
            "web_search_queries": [{"query": query, "uri": r.get("uri", "")} for r in results[:1]] or [{"query": query}],
        })
    return OutputPb(citations={"cited_chunks": [
        {"uri": r.get("uri", ""), "title": r.get("title", ""), "text": r.get("snippet", ""), "requires_attribution": True}
        for r in results
    ]})
