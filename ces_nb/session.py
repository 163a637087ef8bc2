"""Session: one CES conversation; send / stream turns, keep the history, save it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

from .errors import CesError, explain
from .inputs import build_inputs
from .model import ToolCall, Transcript, Turn, _output_dict

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

    def __init__(self, client, app: str, session_id: str | None = None, **config: Any):
        unknown = set(config) - set(CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown SessionConfig field(s) {sorted(unknown)}; the fields are {', '.join(CONFIG_FIELDS)}")
        self.client = client
        self.app = app
        self.id = session_id or f"nb-{uuid.uuid4().hex[:12]}"
        self.name = f"{app}/sessions/{self.id}"
        self.config = dict(config)
        self.turns: list[Turn] = []

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

    def send(self, text: str | None = None, **inputs: Any) -> Turn:
        """One turn through RunSession. Inputs: text, dtmf=, event=, variables=, image=, blob=, tool_responses=."""
        request_inputs = self._inputs(text, inputs)
        try:
            response = self.client.sessions.run_session(request={"config": self.session_config(), "inputs": request_inputs})
        except Exception as exc:
            raise explain(exc, target=self.client.target, app=self.app) from exc
        turn = Turn.from_outputs(response.outputs, request_inputs)
        return self._keep(turn)

    def stream(self, text: str | None = None, *, on_output: Callable[[Turn], None] | None = None, **inputs: Any) -> Turn:
        """One turn through StreamRunSession; `on_output(turn_so_far)` runs as each output arrives.

        If the stream breaks after some outputs arrived, the turn keeps them, is marked
        `partial`, carries the error, and is returned (and kept in the history)."""
        from google.cloud import ces_v1

        request_inputs = self._inputs(text, inputs)
        turn = Turn.from_outputs([], request_inputs)
        self._audio_format(turn)
        try:
            stream = self.client.sessions.stream_run_session(
                request=ces_v1.RunSessionRequest(config=self.session_config(), inputs=request_inputs)
            )
            for response in stream:
                for output in response.outputs:
                    turn.add_output(_output_dict(output))
                if on_output is not None:
                    on_output(turn)
        except Exception as exc:
            error = explain(exc, target=self.client.target, app=self.app)
            if not turn.outputs:
                raise error from exc
            turn.partial, turn.error = True, str(error)
        return self._keep(turn)

    def respond(self, responses: Any, **more: Any) -> Turn:
        """Answer pending client tool calls: {call_id: response_dict}, or a list of ToolResponses."""
        return self.send(tool_responses=responses, **more)

    @property
    def pending(self) -> dict[str, ToolCall]:
        """Client tool calls the agent is still waiting on, by call id."""
        calls: dict[str, ToolCall] = {}
        for turn in self.turns:
            for item in turn.inputs:
                if item.kind == "tool_responses":
                    for response in item.value:
                        calls.pop(response.id, None)
            for call in turn.tool_calls:
                calls[call.id] = call
        return calls

    def _inputs(self, text: str | None, inputs: dict) -> list:
        try:
            return build_inputs(text, pending=self.pending, **inputs)
        except TypeError as exc:
            raise TypeError(f"{exc}; inputs are text, dtmf=, event=, variables=, image=, blob=, tool_responses=") from None

    def _keep(self, turn: Turn) -> Turn:
        self._audio_format(turn)
        if not turn.index:
            turn.index = (self.turns[-1].index if self.turns else 0) + 1
        self.turns.append(turn)
        return turn

    def _audio_format(self, turn: Turn) -> None:
        audio = self.config.get("output_audio_config")
        if audio:
            get = audio.get if isinstance(audio, dict) else lambda k, d=None: getattr(audio, k, d)
            encoding = get("audio_encoding", None)
            turn.audio_encoding = getattr(encoding, "name", encoding) or turn.audio_encoding
            turn.audio_sample_rate = int(get("sample_rate_hertz", 0) or turn.audio_sample_rate)

    # -- history -------------------------------------------------------------------

    @property
    def transcript(self) -> Transcript:
        return Transcript(list(self.turns), session=self.name, app=self.app)

    def save(self, path: str | Path) -> Path:
        """Write the session as a transcript JSON file; `Transcript.load(path)` reads it back."""
        return self.transcript.save(path)

    @property
    def ended(self) -> bool:
        return any(t.ended for t in self.turns)

    def __repr__(self) -> str:
        state = "ended" if self.ended else (f"{len(self.pending)} tool call(s) pending" if self.pending else "open")
        return f"<ces_nb.Session {self.name}: {len(self.turns)} turn(s), {state}>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import session_html

        return {"text/plain": repr(self), "text/html": session_html(self)}


__all__ = ["Session", "CesError"]
