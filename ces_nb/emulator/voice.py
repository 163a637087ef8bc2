"""Voice for BidiRunSession: audio in (endpointing on the audio itself, recognition), audio
out (TTS in the requested encoding and rate, paced in real time so a user can barge in).

Endpointing: pocketsphinx's voice activity detector (`pocketsphinx.Vad`, the WebRTC VAD)
classifies each 20 ms frame as speech or not. Speech starts after a few speech frames and
ends after a trailing silence, the hangover, counted from the VAD's last speech frame (the
VAD itself holds on ~120 ms after the voice stops), whose length depends on what was said:

- COMPLETE_HANGOVER_MS (200 ms) when the grammar search over the audio so far ends on a
  complete phrase of the app's grammar (an example user utterance or a variable value):
  the user said something the agent can answer, so the turn ends soon.
- HANGOVER_MS (600 ms) otherwise: "I'd like to book a seat on flight ... SW123" is not a
  phrase until the flight number comes, so a pause before it does not split the utterance.

(pocketsphinx's own `Endpointer` ends speech on a fixed window of frames, so it cannot wait
longer or shorter by what was said: the hangover is counted here, on its `Vad`.)

CES's v1 API has no end-of-speech sensitivity setting to honour: AudioProcessingConfig
carries synthesize_speech_configs, barge_in_config, inactivity_timeout and
ambient_sound_config only (google-cloud-ces 0.7.2 and the REST reference), and
InputAudioConfig only noise_suppression_level.

While the user speaks, the growing transcript goes out as recognition_result; at the end of
speech the final transcript drives the agent's turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from google.cloud import ces_v1
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from pocketsphinx import Vad

from .. import audio
from ..tts import synthesize, voice_for
from .asr import SAMPLE_RATE, Recognition, Recognizer, app_phrases
from .errors import EmulatorError

FRAME_MS = 20               # the VAD takes 10, 20 or 30 ms frames
START_FRAMES = 3            # 60 ms of speech starts an utterance
HANGOVER_MS = 600           # this much silence after speech ends an utterance...
COMPLETE_HANGOVER_MS = 200  # ...or this much, when what was said is a complete phrase of the grammar
COMPLETE_CHECK_MS = 100     # the grammar search runs after this much silence, so its answer is
                            # ready when COMPLETE_HANGOVER_MS comes (shorter gaps happen inside words)
VAD_MODE = Vad.MEDIUM_STRICT  # the VAD holds on after the voice stops: ~160 ms in its LOOSE mode (the default),
                              # ~120 ms in this one, which still splits no demo phrase (soft "t" of "tier" included)
VAD_PRIMING_FRAMES = 10     # see Endpointer.__post_init__
PARTIAL_EVERY_MS = 400      # recognition_result cadence while speaking
OUT_CHUNK_MS = 100          # agent audio is sent in pieces this long
NOISE_FLOOR_RMS = 30.0      # see decode_input


@dataclass
class AudioFormat:
    encoding: str
    sample_rate: int

    @classmethod
    def from_config(cls, config, field_name: str) -> "AudioFormat":
        encoding = ces_v1.AudioEncoding(config.audio_encoding).name
        if encoding == "AUDIO_ENCODING_UNSPECIFIED":
            raise EmulatorError.invalid_argument(f"{field_name}.audio_encoding must be LINEAR16, MULAW or ALAW")
        if config.sample_rate_hertz not in audio.SAMPLE_RATES:
            raise EmulatorError.invalid_argument(
                f"{field_name}.sample_rate_hertz must be one of {', '.join(map(str, audio.SAMPLE_RATES))}; "
                f"got {config.sample_rate_hertz}"
            )
        return cls(encoding, config.sample_rate_hertz)


def audio_formats(config: ces_v1.SessionConfig) -> tuple[AudioFormat | None, AudioFormat | None]:
    pb = ces_v1.SessionConfig.pb(config)
    inp = AudioFormat.from_config(config.input_audio_config, "config.input_audio_config") if pb.HasField("input_audio_config") else None
    out = AudioFormat.from_config(config.output_audio_config, "config.output_audio_config") if pb.HasField("output_audio_config") else None
    return inp, out


@dataclass
class Utterance:
    transcript: str
    speech_started_ns: int
    speech_ended_ns: int      # when endpointing decided the user was done
    asr_ms: float
    samples: np.ndarray
    trailing_silence_ms: int = 0  # the hangover heard before the decision (0 on half-close)
    ended_by: str = "half-close"  # "complete phrase", "silence" or "half-close"


@dataclass
class Endpointer:
    """Feeds on decoded 16 kHz audio; reports when an utterance starts and ends."""

    recognizer: Recognizer
    fmt: AudioFormat | None = None  # the client's input format
    resampler: object = None        # soxr.ResampleStream from fmt's rate to 16 kHz, kept across chunks
    noise: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))  # seeded: same audio, same words
    vad: Vad = field(default_factory=lambda: Vad(VAD_MODE, SAMPLE_RATE, FRAME_MS / 1000))
    buffer: list[np.ndarray] = field(default_factory=list)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    speech_run: int = 0
    silence_ms: int = 0
    speaking: bool = False
    started_ns: int = 0
    since_partial_ms: int = 0
    complete: Recognition | None = None  # the grammar's answer for the current silence, once asked
    complete_ms: float = 0.0             # how long asking took

    def __post_init__(self):
        # A fresh VAD calls its first ~100 ms speech whatever they hold, until it has a noise
        # estimate: teach it the noise floor decode_input adds, so stream start is not speech.
        rng = np.random.default_rng(1)
        frame = SAMPLE_RATE * FRAME_MS // 1000
        for _ in range(VAD_PRIMING_FRAMES):
            self.vad.is_speech(rng.normal(0.0, NOISE_FLOOR_RMS, frame).astype(np.int16).tobytes())

    def decode(self, data: bytes) -> np.ndarray:
        """A chunk from the client -> 16 kHz samples, through this stream's resampler and noise floor."""
        return decode_input(data, self.fmt, self.resampler, self.noise)

    def feed(self, samples: np.ndarray) -> tuple[list[str], Utterance | None, bool]:
        """(partial transcripts to send, a finished utterance or None, whether speech just started)."""
        frame = SAMPLE_RATE * FRAME_MS // 1000
        data = np.concatenate([self.pending, samples])
        partials: list[str] = []
        started = False
        done: Utterance | None = None
        usable = len(data) - len(data) % frame
        for start in range(0, usable, frame):
            chunk = data[start:start + frame]
            speech = self.vad.is_speech(chunk.tobytes())
            if not self.speaking:
                self.speech_run = self.speech_run + 1 if speech else 0
                self.buffer.append(chunk)
                self.buffer = self.buffer[-START_FRAMES - 5:]  # a little lead-in, no more
                if self.speech_run >= START_FRAMES:
                    self.speaking, started, self.silence_ms, self.since_partial_ms = True, True, 0, 0
                    self.started_ns = time.time_ns() - START_FRAMES * FRAME_MS * 1_000_000
                continue
            self.buffer.append(chunk)
            if speech:
                self.silence_ms, self.complete = 0, None
            else:
                self.silence_ms += FRAME_MS
            self.since_partial_ms += FRAME_MS
            if self.since_partial_ms >= PARTIAL_EVERY_MS and self.silence_ms == 0:
                self.since_partial_ms = 0
                text = self.recognizer.partial(np.concatenate(self.buffer))
                if text:
                    partials.append(text)
            if self.silence_ms >= COMPLETE_CHECK_MS and self.complete is None:
                t0 = time.perf_counter()
                self.complete = self.recognizer.complete_phrase(np.concatenate(self.buffer))
                self.complete_ms = (time.perf_counter() - t0) * 1000
            if done is None:
                if self.complete is not None and self.complete.transcript and self.silence_ms >= COMPLETE_HANGOVER_MS:
                    done = self._finish("complete phrase")
                elif self.silence_ms >= HANGOVER_MS:
                    done = self._finish("silence")
        self.pending = data[usable:]
        return partials, done, started

    def _finish(self, ended_by: str) -> Utterance:
        ended = time.time_ns()
        speech = np.concatenate(self.buffer) if self.buffer else np.zeros(0, dtype=np.int16)
        if ended_by == "complete phrase":  # the grammar already heard the phrase: no second search
            result, asr_ms = self.complete, self.complete_ms
        else:
            t0 = time.perf_counter()
            result = self.recognizer.recognize(speech)
            asr_ms = (time.perf_counter() - t0) * 1000
        utterance = Utterance(result.transcript, self.started_ns, ended, asr_ms, speech,
                              self.silence_ms if ended_by != "half-close" else 0, ended_by)
        self.buffer, self.speaking, self.speech_run, self.silence_ms, self.complete = [], False, 0, 0, None
        return utterance

    def flush(self) -> Utterance | None:
        """Half-close while speaking: what was said so far is the utterance."""
        return self._finish("half-close") if self.speaking else None


class Voice:
    """Per app: the recognizer and the agent's voice."""

    def __init__(self, app):
        self.recognizer = Recognizer(app_phrases(app))
        settings = app.app.language_settings
        configs = dict(app.app.audio_processing_config.synthesize_speech_configs) if app.app.audio_processing_config else {}
        language = settings.default_language_code or "en-US"
        chosen = configs.get(language)
        self.voice = voice_for(language, chosen.voice if chosen else None)
        self.rate_wpm = int(170 * (chosen.speaking_rate if chosen and chosen.speaking_rate else 1.0))

    def endpointer(self, fmt: AudioFormat | None = None) -> Endpointer:
        resampler = None
        if fmt is not None and fmt.sample_rate != SAMPLE_RATE:
            import soxr

            resampler = soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="int16")
        return Endpointer(self.recognizer, fmt, resampler)


    def speak(self, text: str, fmt: AudioFormat) -> tuple[bytes, float, float]:
        """(encoded audio, synthesis ms, audio duration ms)."""
        t0 = time.perf_counter()
        speech = synthesize(text, self.voice, self.rate_wpm)
        samples = audio.resample(speech.samples, speech.sample_rate, fmt.sample_rate)
        data = audio.encode(samples, fmt.encoding, fmt.sample_rate)
        return data, (time.perf_counter() - t0) * 1000, len(samples) / fmt.sample_rate * 1000


def decode_input(data: bytes, fmt: AudioFormat, resampler=None, noise: np.random.Generator | None = None) -> np.ndarray:
    """A client's audio chunk -> 16 kHz int16 for the recognizer; garbage gets INVALID_ARGUMENT.
    Pass the stream's `resampler` (soxr.ResampleStream): chunks resampled one by one, without
    the filter's state, would click at every boundary and cost the recognizer words."""
    width = audio.BYTES_PER_SAMPLE[fmt.encoding]
    if len(data) % width:
        raise EmulatorError.invalid_argument(
            f"audio chunk of {len(data)} bytes is not whole {fmt.encoding} samples ({width} bytes each); "
            "send the raw samples the input_audio_config describes"
        )
    try:
        samples = audio.decode(data, fmt.encoding, fmt.sample_rate)
    except Exception as exc:
        raise EmulatorError.invalid_argument(f"audio chunk could not be decoded as {fmt.encoding}: {exc}") from exc
    if resampler is None or fmt.sample_rate == SAMPLE_RATE:
        wide = audio.resample(samples, fmt.sample_rate, SAMPLE_RATE)
    else:
        wide = resampler.resample_chunk(samples)
    if noise is not None and len(wide):
        # Digitally clean audio (synthesized, or telephone audio upsampled to 16 kHz, empty above
        # 4 kHz) leaves filter banks at zero energy, and the model's features fall apart there:
        # over the demo utterances, 8 kHz LINEAR16 had 23% WER and 16 kHz 7.6%. A faint noise
        # floor (rms 30 of 32767) fills them: 0% in every encoding at 8 and 16 kHz. pocketsphinx's
        # own `dither` is too small to help.
        wide = np.clip(wide + noise.normal(0.0, NOISE_FLOOR_RMS, len(wide)), -32768, 32767).astype(np.int16)
    return wide


def voice_span(name: str, start_ns: int, end_ns: int, attributes: dict) -> ces_v1.Span:
    """A VAD / ASR / TTS span in CES's shape."""
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromNanoseconds(start_ns)
    end.FromNanoseconds(end_ns)
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(max(0, end_ns - start_ns))
    attrs = struct_pb2.Struct()
    attrs.update(attributes)
    return ces_v1.Span.wrap(ces_v1.Span.pb()(name=name, start_time=start, end_time=end, duration=duration, attributes=attrs))
