"""google.cloud.ces.v1.SessionService: RunSession, StreamRunSession, BidiRunSession."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud import ces_v1

from .. import names
from ..errors import EmulatorError
from ..fair_share import FairShare
from ..registry import AppRegistry
from ... import audio
from ..voice import OUT_CHUNK_MS, Voice, audio_formats, voice_span
from . import Undecodable, abort_for, check_decoded, decoder, log, unary

SERVICE = "google.cloud.ces.v1.SessionService"


def _response(outputs: list[ces_v1.SessionOutput]) -> ces_v1.RunSessionResponse:
    """Built on the raw protobuf: proto-plus would marshal each output again."""
    return ces_v1.RunSessionResponse.wrap(ces_v1.RunSessionResponse.pb()(outputs=[ces_v1.SessionOutput.pb(o) for o in outputs]))


@dataclass
class _BidiStream:
    """One BidiRunSession's state between its messages."""

    runtime: Any
    name: Any
    config: ces_v1.SessionConfig
    voice: Voice | None
    out_fmt: Any
    endpointer: Any
    inbox: asyncio.Queue
    backlog: list = field(default_factory=list)  # messages read while agent audio was playing
    warnings: list[tuple[int, str]] = field(default_factory=list)  # (time, message) of chunks skipped since the last turn


async def _read_into(inbox: asyncio.Queue, request_iterator) -> None:
    """The client's messages into the stream's inbox, then None (or why it stopped, then None)."""
    try:
        async for message in request_iterator:
            await inbox.put(message)
    except Exception as exc:  # the client went away mid-stream
        await inbox.put(exc)
    await inbox.put(None)


def _realtime_input(message) -> ces_v1.SessionInput:
    check_decoded(message)
    if ces_v1.BidiSessionClientMessage.pb(message).WhichOneof("message_type") != "realtime_input":
        raise EmulatorError.invalid_argument("config may only be sent once, in the first message; send realtime_input")
    return message.realtime_input


class SessionService:
    def __init__(self, registry: AppRegistry, fair_share: FairShare, audio_pace: float = 1.0):
        self.registry = registry
        self.fair_share = fair_share  # the server's, shared with the ToolService
        self.audio_pace = audio_pace  # agent audio goes out at this fraction of its playing time
        self._bidi_streams: set[asyncio.Queue] = set()
        self._voices: dict[str, Voice] = {}

    def _target(self, config: ces_v1.SessionConfig):
        name = names.parse("session", config.session, "config.session")
        return self.registry.runtime(name), name

    async def run_session(self, request: ces_v1.RunSessionRequest, context) -> ces_v1.RunSessionResponse:
        started = time.time_ns()
        runtime, name = self._target(request.config)
        async with self.fair_share.request(context.peer()):
            outputs = await runtime.run_turn_to_end(name.id, request.config, list(request.inputs), turn_started_ns=started)
        return _response(outputs)

    async def stream_run_session(self, request: ces_v1.RunSessionRequest, context):
        started = time.time_ns()
        try:
            check_decoded(request)
            runtime, name = self._target(request.config)
            async with self.fair_share.request(context.peer()):
                async for output in runtime.run_turn(
                    name.id, request.config, list(request.inputs), stream_text=request.config.enable_text_streaming, turn_started_ns=started
                ):
                    yield _response([output])
        except Exception as exc:
            await abort_for(exc, context, "StreamRunSession")

    async def bidi_run_session(self, request_iterator, context):
        """The first message carries config; then realtime_input, one turn each."""
        inbox: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_read_into(inbox, request_iterator))
        self._bidi_streams.add(inbox)
        try:
            first = await inbox.get()
            if first is None or isinstance(first, Exception):
                return
            stream = self._bidi_open(first, inbox)
            while True:
                message = stream.backlog.pop(0) if stream.backlog else await inbox.get()
                if message is None or isinstance(message, Exception):
                    utterance = stream.endpointer.flush() if stream.endpointer else None
                    if utterance and utterance.transcript:
                        async for out in self._bidi_voice_turn(stream, utterance.transcript, utterance):
                            yield out
                    return  # half-close: the client is done
                if message == "go_away":
                    yield ces_v1.BidiSessionServerMessage(go_away=ces_v1.GoAway())
                    return
                async for out in self._bidi_input(stream, _realtime_input(message)):
                    yield out
        except Exception as exc:
            await abort_for(exc, context, "BidiRunSession")
        finally:
            self._bidi_streams.discard(inbox)
            reader.cancel()

    def _bidi_open(self, first, inbox: asyncio.Queue) -> "_BidiStream":
        """The stream's session and audio formats, from its first message (which must be config)."""
        check_decoded(first)
        if ces_v1.BidiSessionClientMessage.pb(first).WhichOneof("message_type") != "config":
            raise EmulatorError.invalid_argument(
                "the first BidiRunSession message must carry config (SessionConfig with session="
                "'projects/p/locations/l/apps/APP/sessions/ID'); send realtime_input after it"
            )
        config = first.config
        runtime, name = self._target(config)
        in_fmt, out_fmt = audio_formats(config)  # a bad audio config is INVALID_ARGUMENT naming the field
        voice = self._voice(runtime) if (in_fmt or out_fmt) else None
        endpointer = voice.endpointer(in_fmt) if (voice and in_fmt) else None
        return _BidiStream(runtime, name, config, voice, out_fmt, endpointer, inbox)

    async def _bidi_input(self, stream: "_BidiStream", item: ces_v1.SessionInput):
        """One realtime_input: audio goes to the endpointer; anything else is a turn, answered
        aloud in a voice session."""
        if ces_v1.SessionInput.pb(item).WhichOneof("input_type") == "audio":
            async for out in self._bidi_audio(stream, item.audio):
                yield out
        elif stream.out_fmt is not None:  # text, DTMF or events in a voice session: answered aloud
            async for out in self._bidi_voice_turn(stream, item, None):
                yield out
        else:
            started = time.time_ns()
            async for output in stream.runtime.run_turn(stream.name.id, stream.config, [item], turn_started_ns=started):
                if output.turn_completed:
                    _report_warnings(output.diagnostic_info.root_span, stream.warnings)
                yield ces_v1.BidiSessionServerMessage(session_output=output)
                if "end_session" in output:
                    yield ces_v1.BidiSessionServerMessage(end_session=output.end_session)

    async def _bidi_audio(self, stream: "_BidiStream", chunk: bytes):
        """A chunk of the user's audio: recognition results as they come, and a voice turn once
        the endpointer hears the end of an utterance."""
        if stream.endpointer is None:
            raise EmulatorError.invalid_argument(
                "audio input needs config.input_audio_config (audio_encoding LINEAR16, MULAW or ALAW and "
                "sample_rate_hertz) in the first BidiRunSession message"
            )
        try:
            samples = stream.endpointer.decode(chunk)
        except EmulatorError as exc:  # one bad chunk: skip it, keep the stream, tell the client
            log.warning("BidiRunSession %s: %s", stream.name.id, exc.message)
            stream.warnings.append((time.time_ns(), exc.message))
            return
        # Recognition blocks: off the event loop, so other sessions keep flowing.
        partials, utterance, _started = await asyncio.to_thread(stream.endpointer.feed, samples)
        for text in partials:
            yield ces_v1.BidiSessionServerMessage(recognition_result=ces_v1.RecognitionResult(transcript=text))
        if utterance is not None and utterance.transcript:
            yield ces_v1.BidiSessionServerMessage(recognition_result=ces_v1.RecognitionResult(transcript=utterance.transcript))
            async for out in self._bidi_voice_turn(stream, utterance.transcript, utterance):
                yield out

    def _bidi_voice_turn(self, stream: "_BidiStream", said, utterance):
        return self._voice_turn(stream.runtime, stream.name, stream.config, said, utterance, stream.voice, stream.out_fmt,
                                stream.inbox, stream.backlog, stream.endpointer, stream.warnings)

    def _voice(self, runtime) -> Voice:
        voice = self._voices.get(runtime.app.app_id)
        if voice is None:
            voice = self._voices[runtime.app.app_id] = Voice(runtime.app)
        return voice

    async def _voice_turn(self, runtime, name, config, said, utterance, voice, out_fmt, inbox, backlog, endpointer, warnings):
        """One spoken (or typed) turn: the agent's outputs, then its reply as audio paced in real
        time (stopped by barge-in), then the completion with VAD / ASR / TTS spans."""
        item = ces_v1.SessionInput(text=said) if isinstance(said, str) else said
        started = utterance.speech_ended_ns if utterance else time.time_ns()
        outputs = [o async for o in runtime.run_turn(name.id, config, [item], turn_started_ns=started)]
        if not outputs:
            return
        final = outputs[-1]
        diagnostic = ces_v1.SessionOutput.DiagnosticInfo(final.diagnostic_info)
        turn_index = final.turn_index
        body = ces_v1.SessionOutput(final)
        body.turn_completed = False
        ces_v1.SessionOutput.pb(body).ClearField("diagnostic_info")
        texts = []
        for output in [*outputs[:-1], body]:
            kind = ces_v1.SessionOutput.pb(output).WhichOneof("output_type")
            if kind is None:
                continue
            if kind == "text":
                texts.append(output.text)
            yield ces_v1.BidiSessionServerMessage(session_output=output)
            if kind == "end_session":
                yield ces_v1.BidiSessionServerMessage(end_session=output.end_session)
        root = diagnostic.root_span
        _report_warnings(root, warnings)
        if utterance is not None:
            root.child_spans.append(voice_span("VAD", utterance.speech_started_ns, utterance.speech_ended_ns, {
                "audio duration (ms)": len(utterance.samples) / 16, "trailing silence (ms)": utterance.trailing_silence_ms,
                "ended by": utterance.ended_by}))
            asr_end = utterance.speech_ended_ns + int(utterance.asr_ms * 1e6)
            root.child_spans.append(voice_span("ASR", utterance.speech_ended_ns, asr_end, {"transcript": utterance.transcript}))
        spoken = " ".join(t.strip() for t in texts if t.strip())
        if out_fmt is not None and spoken:
            tts_start = time.time_ns()
            data, synth_ms, audio_ms = await asyncio.to_thread(voice.speak, spoken, out_fmt)
            first_audio_ns = time.time_ns()
            root.child_spans.append(voice_span("TTS", tts_start, tts_start + int(synth_ms * 1e6), {
                "voice": voice.voice, "time to first audio (ms)": (first_audio_ns - started) / 1e6, "audio duration (ms)": audio_ms}))
            # From the user's real end of speech: the trailing silence the endpointer waited through comes first.
            hangover_ms = utterance.trailing_silence_ms if utterance else 0
            root.attributes["perceived latency (ms)"] = (first_audio_ns - started) / 1e6 + hangover_ms
            root.attributes["audio duration (ms)"] = audio_ms
            for piece in audio.chunks(data, out_fmt.encoding, out_fmt.sample_rate, OUT_CHUNK_MS):
                yield ces_v1.BidiSessionServerMessage(session_output=ces_v1.SessionOutput(audio=piece, turn_index=turn_index))
                heard = await self._listen_while_speaking(inbox, backlog, endpointer, self.audio_pace * OUT_CHUNK_MS / 1000)
                if heard == "barge-in":
                    yield ces_v1.BidiSessionServerMessage(interruption_signal=ces_v1.InterruptionSignal(barge_in=True))
                    break
                if heard == "stop":
                    break
        _cover_children(root)
        yield ces_v1.BidiSessionServerMessage(session_output=ces_v1.SessionOutput(
            turn_index=turn_index, turn_completed=True, diagnostic_info=diagnostic))

    async def _listen_while_speaking(self, inbox, backlog, endpointer, seconds: float) -> str | None:
        """Wait one chunk's playing time, reading what the client sends meanwhile: "barge-in" when
        the user starts speaking, "stop" when the stream is ending, else None. Audio goes to the
        endpointer; anything else waits in the backlog for its turn."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not inbox.empty() or seconds > 0:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0 and inbox.empty():
                return None
            try:
                message = inbox.get_nowait() if timeout <= 0 else await asyncio.wait_for(inbox.get(), timeout)
            except asyncio.TimeoutError:
                return None
            if endpointer is not None and not (message is None or isinstance(message, (Exception, str, Undecodable))) \
                    and ces_v1.BidiSessionClientMessage.pb(message).WhichOneof("message_type") == "realtime_input" \
                    and ces_v1.SessionInput.pb(message.realtime_input).WhichOneof("input_type") == "audio":
                try:
                    samples = endpointer.decode(message.realtime_input.audio)
                except EmulatorError:
                    continue
                _partials, utterance, started = await asyncio.to_thread(endpointer.feed, samples)
                if started:
                    return "barge-in"
                continue
            backlog.append(message)
            if message is None or isinstance(message, Exception) or message == "go_away":
                return "stop"
        return None

    async def go_away(self) -> None:
        """Tell every open bidi stream to reconnect elsewhere (before shutdown)."""
        for inbox in list(self._bidi_streams):
            await inbox.put("go_away")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "RunSession": unary(self.run_session, ces_v1.RunSessionRequest, ces_v1.RunSessionResponse),
                "StreamRunSession": grpc.unary_stream_rpc_method_handler(
                    self.stream_run_session,
                    request_deserializer=decoder(ces_v1.RunSessionRequest),
                    response_serializer=ces_v1.RunSessionResponse.serialize,
                ),
                "BidiRunSession": grpc.stream_stream_rpc_method_handler(
                    self.bidi_run_session,
                    request_deserializer=decoder(ces_v1.BidiSessionClientMessage),
                    response_serializer=ces_v1.BidiSessionServerMessage.serialize,
                ),
            },
        )


def _report_warnings(root: ces_v1.Span, warnings: list[tuple[int, str]]) -> None:
    """Audio chunks skipped since the last turn go into this turn's diagnostic info, where the
    client sees them: a `Warning` span each, and the messages under `warnings`."""
    for at_ns, message in warnings:
        root.child_spans.append(voice_span("Warning", at_ns, at_ns, {"message": message}))
    if warnings:
        root.attributes["warnings"] = [m for _, m in warnings]
        warnings.clear()


def _cover_children(root: ces_v1.Span) -> None:
    """Stretch the root over the voice spans added around the turn (speech before it, TTS after)."""
    pb = ces_v1.Span.pb(root)
    starts = [c.start_time.ToNanoseconds() for c in pb.child_spans if c.HasField("start_time")]
    ends = [c.end_time.ToNanoseconds() for c in pb.child_spans if c.HasField("end_time")]
    if not starts or not pb.HasField("start_time"):
        return
    start = min([pb.start_time.ToNanoseconds(), *starts])
    end = max([pb.end_time.ToNanoseconds(), *ends])
    pb.start_time.FromNanoseconds(start)
    pb.end_time.FromNanoseconds(end)
    pb.duration.FromNanoseconds(end - start)
