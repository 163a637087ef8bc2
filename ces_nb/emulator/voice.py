"""Voice for BidiRunSession: audio in (endpointing on the audio itself, recognition), audio
out (TTS in the requested encoding and rate, paced in real time so a user can barge in).

Endpointing is an energy gate on 20 ms frames: speech starts after a few loud frames and
ends after a trailing silence. While the user speaks, the growing transcript goes out as
recognition_result; at the end of speech the final transcript drives the agent's turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from google.cloud import ces_v1
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from .. import audio
from ..tts import synthesize, voice_for
from .asr import SAMPLE_RATE, Recognizer, app_phrases
from .errors import EmulatorError

FRAME_MS = 20
START_FRAMES = 3          # 60 ms of sound starts an utterance
END_SILENCE_MS = 600      # this much quiet after speech ends it
SPEECH_RMS = 500.0        # frame level that starts speech (int16 scale)
QUIET_RMS = 120.0         # once speaking, only frames below this count as silence (hysteresis:
                          # soft consonants like the "t" of "tier" must not end an utterance)
PARTIAL_EVERY_MS = 400    # recognition_result cadence while speaking
OUT_CHUNK_MS = 100        # agent audio is sent in pieces this long
NOISE_FLOOR_RMS = 30.0    # see decode_input


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


@dataclass
class Endpointer:
    """Feeds on decoded 16 kHz audio; reports when an utterance starts and ends."""

    recognizer: Recognizer
    fmt: AudioFormat | None = None  # the client's input format
    resampler: object = None        # soxr.ResampleStream from fmt's rate to 16 kHz, kept across chunks
    noise: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))  # seeded: same audio, same words
    buffer: list[np.ndarray] = field(default_factory=list)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    loud_run: int = 0
    quiet_ms: int = 0
    speaking: bool = False
    started_ns: int = 0
    since_partial_ms: int = 0

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
            level = audio.rms(chunk)
            loud = level >= SPEECH_RMS
            if not self.speaking:
                self.loud_run = self.loud_run + 1 if loud else 0
                self.buffer.append(chunk)
                self.buffer = self.buffer[-START_FRAMES - 5:]  # a little lead-in, no more
                if self.loud_run >= START_FRAMES:
                    self.speaking, started, self.quiet_ms, self.since_partial_ms = True, True, 0, 0
                    self.started_ns = time.time_ns() - START_FRAMES * FRAME_MS * 1_000_000
                continue
            self.buffer.append(chunk)
            self.quiet_ms = 0 if level >= QUIET_RMS else self.quiet_ms + FRAME_MS
            self.since_partial_ms += FRAME_MS
            if self.since_partial_ms >= PARTIAL_EVERY_MS and self.quiet_ms == 0:
                self.since_partial_ms = 0
                text = self.recognizer.partial(np.concatenate(self.buffer))
                if text:
                    partials.append(text)
            if self.quiet_ms >= END_SILENCE_MS and done is None:
                done = self._finish()
        self.pending = data[usable:]
        return partials, done, started

    def _finish(self) -> Utterance:
        ended = time.time_ns()
        speech = np.concatenate(self.buffer) if self.buffer else np.zeros(0, dtype=np.int16)
        t0 = time.perf_counter()
        result = self.recognizer.recognize(speech)
        asr_ms = (time.perf_counter() - t0) * 1000
        utterance = Utterance(result.transcript, self.started_ns, ended, asr_ms, speech)
        self.buffer, self.speaking, self.loud_run, self.quiet_ms = [], False, 0, 0
        return utterance

    def flush(self) -> Utterance | None:
        """Half-close while speaking: what was said so far is the utterance."""
        return self._finish() if self.speaking else None


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
