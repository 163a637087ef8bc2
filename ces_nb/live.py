"""LiveSession: BidiRunSession for voice (and text) in a notebook.

    with session.live(input_audio={"audio_encoding": "LINEAR16", "sample_rate_hertz": 16000}) as live:
        live.send_audio("question.wav")      # any file soundfile reads; or an ndarray, or raw bytes
        turn = live.next_turn()              # a turn (LiveTurn): transcript, text, the agent's audio, spans

Audio is decoded, resampled, encoded and sent in 40-120 ms chunks, paced in real time or
as fast as possible. When the server says go_away, the stream reconnects with the session's
history in `historical_contexts`, so no turn is lost.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import audio
from .convert.bidi import add_message
from .errors import CesError, explain
from .model import Turn, UserInput

DEFAULT_FORMAT = {"audio_encoding": "LINEAR16", "sample_rate_hertz": 16000}
TRAILING_SILENCE_MS = 800  # what the server's endpointer needs to hear that the user is done
RECONNECT_SECONDS = 20.0


class _Outbox:
    """What a live session sends, handed to one call at a time. A call that is over (the server
    said go_away, or refused a reconnect knock) leaves grpc's sending thread waiting in its request
    iterator; on a plain queue shared with the next call, that thread took the next message and
    sent it to the dead call, and its turn never came (a CI run lost a turn right after a restart)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._call = 0

    def put(self, message) -> None:
        """A message for the current call (None: half-close it)."""
        with self._changed:
            self._items.append(message)
            self._changed.notify_all()

    def retire(self) -> None:
        """The current call takes nothing more; what is queued waits for the next one."""
        with self._changed:
            self._call += 1
            self._changed.notify_all()

    def messages(self, first) -> Iterator:
        """A new call's request iterator (the one before it retires): `first`, then what is put."""
        self.retire()
        call = self._call

        def iterator():
            yield first
            while True:
                with self._changed:
                    while not self._items and self._call == call:
                        self._changed.wait()
                    if self._call != call:
                        return
                    message = self._items.popleft()
                if message is None:
                    return
                yield message

        return iterator()


def _format(value: Any) -> dict:
    if value is None:
        return dict(DEFAULT_FORMAT)
    if isinstance(value, tuple):
        return {"audio_encoding": audio.encoding_name(value[0]), "sample_rate_hertz": int(value[1])}
    out = dict(DEFAULT_FORMAT)
    out.update({k: v for k, v in dict(value).items() if v is not None})
    out["audio_encoding"] = audio.encoding_name(out["audio_encoding"])
    if int(out["sample_rate_hertz"]) not in audio.SAMPLE_RATES:
        raise ValueError(f"sample_rate_hertz {out['sample_rate_hertz']} is not one of {', '.join(map(str, audio.SAMPLE_RATES))}")
    return out


def _read_audio(source: Any, rate: int) -> np.ndarray:
    """A path, WAV bytes or (samples, rate) as samples at `rate`; ValueError saying what it takes otherwise."""
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"no audio file at {source}; give the path of a WAV, FLAC or OGG file")
    try:
        return audio.read(source, rate)[0]
    except (RuntimeError, TypeError, ValueError) as exc:  # soundfile's errors are RuntimeErrors
        what = source if isinstance(source, (str, Path)) else f"the {type(source).__name__} given"
        reason = str(exc).rsplit(": ", 1)[-1].rstrip(".")
        raise ValueError(f"{what} is not audio ({reason}); give a WAV, FLAC or OGG file, an ndarray at the input rate, "
                         "(samples, rate), WAV bytes, or raw bytes in the input encoding") from None


class LiveSession:
    def __init__(self, session, input_audio: Any = None, output_audio: Any = None, chunk_ms: int = 100):
        if not 40 <= chunk_ms <= 120:
            raise ValueError("chunk_ms is 40 to 120 (CES clients send 40-120 ms of audio per message)")
        self.session = session
        self.input_audio = _format(input_audio)
        self.output_audio = _format(output_audio)
        self.chunk_ms = chunk_ms
        self.turns: "queue.Queue[Turn | BaseException]" = queue.Queue()
        self.reconnects = 0
        self._outbox: _Outbox | None = None
        self._reader: threading.Thread | None = None
        self._current: Turn | None = None
        self._pending_inputs: list[UserInput] = []
        self._lock = threading.Lock()
        self._closing = False
        self._received = False  # any server message yet, on any of this session's streams
        self.error: CesError | None = None  # why the stream died, once it has; sends then raise it

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "LiveSession":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, history: bool = False) -> None:
        from google.cloud import ces_v1

        if not history:  # (re)opened by the caller: a fresh start
            self.error, self._closing = None, False
        config = self.session.session_config()
        config.input_audio_config = ces_v1.InputAudioConfig(**self.input_audio)
        config.output_audio_config = ces_v1.OutputAudioConfig(**self.output_audio)
        if history:
            from google.protobuf import json_format

            del config.historical_contexts[:]
            for message in self.session.history_messages():
                config.historical_contexts.append(ces_v1.Message.wrap(json_format.ParseDict(message, ces_v1.Message.pb()())))
        if not history or self._outbox is None:  # a reconnect keeps what the client queued for the next call
            self._outbox = _Outbox()
        first = ces_v1.BidiSessionClientMessage(config=config)
        retry_until = time.monotonic() + RECONNECT_SECONDS if history else None
        self._reader = threading.Thread(target=self._read, args=(first, self._outbox, retry_until), daemon=True, name="ces-nb-live")
        self._reader.start()

    @property
    def alive(self) -> bool:
        """Open, and able to take what you send."""
        return self.error is None and not self._closing and self._reader is not None and self._reader.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Half-close: the server finishes what it heard, then the stream ends."""
        self._closing = True
        if self._outbox is not None:
            self._outbox.put(None)
        if self._reader is not None:
            self._reader.join(timeout)

    # -- sending -------------------------------------------------------------------------

    def _put(self, **message) -> None:
        from google.cloud import ces_v1

        self._check()
        self._outbox.put(ces_v1.BidiSessionClientMessage(realtime_input=ces_v1.SessionInput(**message)))

    def _check(self) -> None:
        """Raise why nothing can be sent: never opened, or the stream died (and how)."""
        if self._outbox is None:
            raise CesError("the live session is not open: use `with session.live() as live:`")
        if self.error is not None:
            raise self._again()

    def _again(self) -> CesError:
        """The stream's error afresh, so raising it again does not pile up tracebacks."""
        e = self.error
        return CesError(str(e), e.code, grpc_error=e.grpc_error, details=e.details)

    def send_audio(self, source: Any, realtime: bool = True, trailing_silence_ms: int = TRAILING_SILENCE_MS) -> None:
        """Speak: a path (WAV, FLAC, OGG ...), an ndarray at the input rate, (samples, rate), WAV
        bytes, or raw bytes already in the input encoding. Silence is added after it so the
        server hears the end of speech."""
        self._check()
        encoding, rate = self.input_audio["audio_encoding"], int(self.input_audio["sample_rate_hertz"])
        if isinstance(source, (bytes, bytearray)) and source[:4] != b"RIFF":
            samples = audio.decode(bytes(source), encoding, rate)
        elif isinstance(source, np.ndarray):
            samples = audio.read((source, rate), rate)[0]
        else:
            samples = _read_audio(source, rate)
        samples = np.concatenate([samples, np.zeros(rate * trailing_silence_ms // 1000, dtype=np.int16)])
        with self._lock:
            self._pending_inputs.append(UserInput("audio", audio.to_wav(audio.encode(samples, "LINEAR16", rate), "LINEAR16", rate)))
        data = audio.encode(samples, encoding, rate)
        started = time.monotonic()
        for n, piece in enumerate(audio.chunks(data, encoding, rate, self.chunk_ms), start=1):
            self._put(audio=piece)
            if realtime:  # as a microphone would: one chunk per chunk of time
                time.sleep(max(0.0, started + n * self.chunk_ms / 1000 - time.monotonic()))

    def say(self, text: str, realtime: bool = False) -> None:
        """Speak `text` with the offline TTS the emulator uses (words a recognizer hears)."""
        from .emulator.asr import normalize
        from .tts import synthesize

        speech = synthesize(normalize(text) or text)
        self.send_audio((speech.samples, speech.sample_rate), realtime=realtime)

    def send_text(self, text: str) -> None:
        self._check()
        with self._lock:
            self._pending_inputs.append(UserInput("text", text))
        self._put(text=text)

    def send_dtmf(self, digits: str) -> None:
        self._check()
        with self._lock:
            self._pending_inputs.append(UserInput("dtmf", digits))
        self._put(dtmf=digits)

    def send_event(self, name: str) -> None:
        from google.cloud import ces_v1

        self._check()
        with self._lock:
            self._pending_inputs.append(UserInput("event", name))
        self._put(event=ces_v1.Event(event=name))

    # -- receiving -----------------------------------------------------------------------

    def next_turn(self, timeout: float = 60.0) -> Turn:
        """The next completed turn (it is also added to the session's history). On a stream that
        died, raises why at once (CesError with the gRPC status) instead of waiting out `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.turns.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
                break
            except queue.Empty:
                if self.error is not None:
                    raise self._again() from None
                if self._closing and (self._reader is None or not self._reader.is_alive()):
                    raise CesError("the live stream is closed; open a new one with session.live() (%cescmd live in a notebook)") from None
                if time.monotonic() >= deadline:
                    raise CesError(f"no turn completed within {timeout:.0f} s; is the audio long enough, "
                                   f"with {TRAILING_SILENCE_MS} ms of silence after it?") from None
        if isinstance(item, CesError) and item is self.error:
            raise self._again()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Turn]:
        while True:
            try:
                yield self.next_turn()
            except CesError:
                return

    def _read(self, first, outbox: _Outbox, retry_until: float | None) -> None:
        from google.api_core import exceptions
        from google.api_core import retry as retries
        from google.cloud import ces_v1

        attempt = {"received": False}

        def stream() -> str:
            attempt["received"] = False
            # The official client waits for the first reply inside the call, so it runs here.
            for message in self.session.client.sessions.bidi_run_session(requests=outbox.messages(first)):
                attempt["received"] = self._received = True
                kind = ces_v1.BidiSessionServerMessage.pb(message).WhichOneof("message_type")
                if kind == "go_away":
                    outbox.retire()  # at once: what the client sends from now on waits for the new stream
                    return "go_away"
                self._on_message(message)
            return "ended"

        if retry_until is not None:
            # After go_away the next server may still be starting: keep knocking (backing off)
            # until the deadline, but never re-open a stream that had started answering. The old
            # server, still shutting down, may accept a knock and then cancel it: a refusal too.
            knock = retries.Retry(
                predicate=lambda exc: (isinstance(exc, (exceptions.ServiceUnavailable, exceptions.Cancelled))
                                       and not attempt["received"] and not self._closing),
                initial=0.25, maximum=1.0, multiplier=2.0, timeout=max(0.0, retry_until - time.monotonic()))
            stream = knock(stream)
        try:
            outcome = stream()
        except exceptions.RetryError as exc:  # out of time: the last refusal says why
            self._died(exc.cause or exc)
            return
        except Exception as exc:
            self._died(exc)
            return
        if outcome == "go_away":
            self._reconnect()
            return
        if not self._closing:  # the server ended the stream, no go_away, nothing wrong
            self.error = CesError(f"the live stream to {self.session.client.target} ended: the server closed it. "
                                  "Open a new one with session.live() (%cescmd live in a notebook)")
        self._finish_partial(None)

    def _died(self, exc: Exception) -> None:
        """The stream broke: keep why (status, the server's words, what to do) for every later send."""
        if self._closing:  # our own close, cancelled mid-call: nothing to report
            self._finish_partial(None)
            return
        import grpc

        base = explain(exc, target=self.session.client.target, app=self.session.app)
        status = base.code.name if base.code else type(exc).__name__
        if self._received:
            message = (f"the live stream to {self.session.client.target} died: {status}, {base.details}. Nothing more can be "
                       "sent on it: open a new one with session.live() (%cescmd live in a notebook)"
                       + (" once the emulator runs again (ces-nb emulator)" if base.code == grpc.StatusCode.UNAVAILABLE else ""))
        else:
            message = f"the live stream could not open ({status}): {base}"
        self.error = CesError(message, base.code, grpc_error=base.grpc_error, details=base.details)
        self._finish_partial(self.error)

    def _on_message(self, message) -> None:
        with self._lock:
            if self._current is None:
                self._current = Turn(inputs=list(self._pending_inputs))
                self._pending_inputs = []
                self._current.audio_encoding = self.output_audio["audio_encoding"]
                self._current.audio_sample_rate = int(self.output_audio["sample_rate_hertz"])
            turn = self._current
        add_message(turn, message)
        if turn.completed:
            with self._lock:
                self._current = None
            self.turns.put(self.session.view(self.session._after(self.session._keep(turn), stream=True)))

    def _finish_partial(self, error: BaseException | None) -> None:
        with self._lock:
            turn, self._current = self._current, None
        if turn is not None and turn.outputs:
            turn.partial, turn.error = True, str(error) if error else "the stream ended mid-turn"
            self.turns.put(self.session.view(self.session._keep(turn)))
        elif error is not None and not self._closing:
            self.turns.put(error)

    def _reconnect(self) -> None:
        """go_away: open a new stream carrying the history; what the client queued goes to it."""
        self._finish_partial(None)
        self.open(history=True)
        self.reconnects += 1

    def __repr__(self) -> str:
        fmt = f"{self.input_audio['audio_encoding']} {self.input_audio['sample_rate_hertz']} Hz"
        state = "; stream died" if self.error is not None else ""
        return f"<ces_nb.LiveSession {self.session.name} ({fmt}; {self.reconnects} reconnect(s){state})>"

