"""BidiRunSession with audio: real speech through the emulator's endpointing, ASR and TTS."""

from __future__ import annotations

import queue
import threading

import grpc
import jiwer
import numpy as np
import pytest
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from ces_nb import audio
from ces_nb.emulator.asr import normalize
from ces_nb.tts import synthesize

from conftest import APP, EmulatorProcess


@pytest.fixture(scope="module")
def fast_voice():
    """An emulator that sends agent audio as fast as it can (tests don't wait for playback)."""
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spoken_voice():
    """Agent audio paced as spoken, so a user can barge in."""
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "1")
    yield server
    server.stop()


def client_for(server):
    return ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=grpc.insecure_channel(server.address)))


def speech(text: str, encoding: str, rate: int, silence_ms: int = 900) -> bytes:
    spoken = synthesize(normalize(text))
    samples = audio.resample(spoken.samples, spoken.sample_rate, rate)
    samples = np.concatenate([np.zeros(rate // 5, np.int16), samples, np.zeros(rate * silence_ms // 1000, np.int16)])
    return audio.encode(samples, encoding, rate)


class Stream:
    """A bidi stream driven from a queue, replies read on a thread."""

    def __init__(self, client, config: dict):
        self.requests: queue.Queue = queue.Queue()
        self.requests.put(ces_v1.BidiSessionClientMessage(config=config))
        self.replies: queue.Queue = queue.Queue()
        self.client = client
        # The official client waits for the first reply inside the call: call it on the reader thread.
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for message in self.client.bidi_run_session(requests=iter(self.requests.get, None)):
                self.replies.put(message)
        except Exception as exc:
            self.replies.put(exc)
        self.replies.put(None)

    def send_audio(self, data: bytes, encoding: str, rate: int, ms: int = 100):
        for piece in audio.chunks(data, encoding, rate, ms):
            self.requests.put(ces_v1.BidiSessionClientMessage(realtime_input=ces_v1.SessionInput(audio=piece)))

    def until_completed(self, timeout: float = 60) -> list:
        got = []
        while True:
            message = self.replies.get(timeout=timeout)
            if message is None or isinstance(message, Exception):
                raise AssertionError(f"stream ended early: {message!r}; got {got}")
            got.append(message)
            pb = ces_v1.BidiSessionServerMessage.pb(message)
            if pb.WhichOneof("message_type") == "session_output" and message.session_output.turn_completed:
                return got

    def close(self):
        self.requests.put(None)


def kind(message) -> str:
    return ces_v1.BidiSessionServerMessage.pb(message).WhichOneof("message_type")


@pytest.mark.parametrize("encoding", ["LINEAR16", "MULAW", "ALAW"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_spoken_turn_round_trip(fast_voice, encoding, rate, request):
    name = f"{APP}/sessions/voice-{encoding}-{rate}"
    config = {"session": name, "input_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate},
              "output_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate}}
    stream = Stream(client_for(fast_voice), config)
    try:
        said = "What is my loyalty tier?"
        stream.send_audio(speech(said, encoding, rate), encoding, rate)
        got = stream.until_completed()
    finally:
        stream.close()
    transcripts = [m.recognition_result.transcript for m in got if kind(m) == "recognition_result"]
    assert transcripts and jiwer.wer(normalize(said), transcripts[-1]) <= 0.2
    texts = " ".join(m.session_output.text for m in got if kind(m) == "session_output" and m.session_output.text)
    assert "Blue member" in texts
    reply = b"".join(m.session_output.audio for m in got if kind(m) == "session_output" and m.session_output.audio)
    samples = audio.decode(reply, encoding, rate)
    duration_s = len(samples) / rate
    assert 1.0 < duration_s < 8.0 and audio.rms(samples) > 300  # non-silent, plausible length
    root = got[-1].session_output.diagnostic_info.root_span
    names = [c.name for c in root.child_spans]
    assert {"VAD", "ASR", "TTS"} <= set(names) and "LLM" in names
    tts = next(c for c in root.child_spans if c.name == "TTS")
    assert tts.attributes["voice"] == "en-us" and tts.attributes["time to first audio (ms)"] > 0
    assert root.attributes["perceived latency (ms)"] > 0 and root.attributes["audio duration (ms)"] == pytest.approx(duration_s * 1000, rel=0.05)


def test_barge_in_interrupts_the_agent(spoken_voice):
    rate, encoding = 16000, "LINEAR16"
    config = {"session": f"{APP}/sessions/barge-in", "input_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate},
              "output_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate}}
    stream = Stream(client_for(spoken_voice), config)
    try:
        stream.send_audio(speech("Hello, hi there", encoding, rate), encoding, rate)  # a long greeting comes back
        seen = []
        while True:  # wait for the agent's voice to start
            message = stream.replies.get(timeout=60)
            seen.append(message)
            if kind(message) == "session_output" and message.session_output.audio:
                break
        stream.send_audio(speech("What is my loyalty tier?", encoding, rate, silence_ms=50), encoding, rate)  # talk over it
        rest = stream.until_completed()
    finally:
        stream.close()
    kinds = [kind(m) for m in rest]
    assert "interruption_signal" in kinds
    signal = rest[kinds.index("interruption_signal")]
    assert signal.interruption_signal.barge_in
    sent = sum(len(m.session_output.audio) for m in seen + rest if kind(m) == "session_output")
    assert sent / (2 * rate) < 5.0  # cut short: the whole greeting is longer


def test_missing_or_bad_audio_config_is_named(fast_voice):
    client = client_for(fast_voice)
    stream = Stream(client, {"session": f"{APP}/sessions/no-audio-config"})
    stream.send_audio(b"\x00\x00" * 1600, "LINEAR16", 16000)
    stream.close()
    replies = []
    while (m := stream.replies.get(timeout=30)) is not None:
        replies.append(m)
    error = replies[-1]
    assert isinstance(error, exceptions.InvalidArgument) and "config.input_audio_config" in error.message
    bad = Stream(client, {"session": f"{APP}/sessions/bad-rate", "input_audio_config": {"audio_encoding": "LINEAR16", "sample_rate_hertz": 11025}})
    bad.close()
    while (m := bad.replies.get(timeout=30)) is not None:
        last = m
    assert isinstance(last, exceptions.InvalidArgument)
    assert "config.input_audio_config.sample_rate_hertz" in last.message and "11025" in last.message


def test_corrupt_audio_is_skipped_and_the_stream_survives(fast_voice):
    rate, encoding = 16000, "LINEAR16"
    config = {"session": f"{APP}/sessions/corrupt", "input_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate},
              "output_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate}}
    stream = Stream(client_for(fast_voice), config)
    try:
        stream.requests.put(ces_v1.BidiSessionClientMessage(realtime_input=ces_v1.SessionInput(audio=b"\x01\x02\x03")))  # torn sample
        stream.send_audio(speech("What is my loyalty tier?", encoding, rate), encoding, rate)
        got = stream.until_completed()
    finally:
        stream.close()
    assert any(kind(m) == "session_output" and "Blue member" in m.session_output.text for m in got)


def test_dtmf_ends_a_turn_in_a_voice_session(fast_voice):
    config = {"session": f"{APP}/sessions/dtmf-voice", "output_audio_config": {"audio_encoding": "LINEAR16", "sample_rate_hertz": 8000}}
    stream = Stream(client_for(fast_voice), config)
    try:
        stream.requests.put(ces_v1.BidiSessionClientMessage(realtime_input=ces_v1.SessionInput(dtmf="1")))
        got = stream.until_completed()
    finally:
        stream.close()
    assert any(kind(m) == "session_output" and m.session_output.audio for m in got)


def _wer(server, encoding: str, rate: int) -> None:
    from ces_nb.emulator.asr import app_phrases
    from ces_nb.emulator.export import load_export
    from ces_nb.emulator.server import demo_app_path

    phrases = [p for p in app_phrases(load_export(str(demo_app_path()))) if len(p.split()) > 1]
    def open_stream(n: int) -> Stream:
        return Stream(client_for(server), {"session": f"{APP}/sessions/wer-{encoding}-{rate}-{n}",
                                           "input_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate}})

    streams = [open_stream(0)]
    heard = []
    try:
        for phrase in phrases:
            streams[-1].send_audio(speech(phrase, encoding, rate), encoding, rate)
            got = streams[-1].until_completed()
            finals = [m.recognition_result.transcript for m in got if kind(m) == "recognition_result"]
            heard.append(finals[-1] if finals else "")
            if any(kind(m) == "end_session" for m in got):  # that session takes no more input
                streams.append(open_stream(len(streams)))
    finally:
        for stream in streams:
            stream.close()
    error = jiwer.wer([normalize(p) for p in phrases], heard)
    assert error <= 0.20, list(zip(phrases, heard))


# The formats callers send: telephony's companded codecs at 8 kHz, and wideband PCM. (The
# lossless 8 kHz case and companding at 16 kHz add CI minutes and no new failure mode: every
# codec round-trips in every encoding and rate in test_speech, and every format makes a spoken
# turn in test_spoken_turn_round_trip.)
@pytest.mark.parametrize("rate,encoding", [(8000, "MULAW"), (8000, "ALAW"), (16000, "LINEAR16")])
def test_word_error_rate_over_every_demo_utterance(fast_voice, encoding, rate):
    """TTS -> bidi -> transcript, over every demo-app utterance: WER <= 20% in the formats callers send."""
    _wer(fast_voice, encoding, rate)


def _spoken_turn(server, name: str, parts: list[tuple[str, int]]) -> tuple[list, list]:
    """Say `parts` ((text, silence after it in ms) each) in one stream, sent as fast as the socket
    takes it (the endpointer counts frames, not wall time); (the first turn's messages,
    everything after it until the stream ends)."""
    rate, encoding = 16000, "LINEAR16"
    config = {"session": f"{APP}/sessions/{name}", "input_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate},
              "output_audio_config": {"audio_encoding": encoding, "sample_rate_hertz": rate}}
    stream = Stream(client_for(server), config)
    try:
        for text, silence_ms in parts:
            stream.send_audio(speech(text, encoding, rate, silence_ms=silence_ms), encoding, rate)
        got = stream.until_completed()
    finally:
        stream.close()
    rest = []
    while (m := stream.replies.get(timeout=60)) is not None:
        rest.append(m)
    return got, rest


def _vad(got) -> dict:
    root = got[-1].session_output.diagnostic_info.root_span
    return dict(next(c for c in root.child_spans if c.name == "VAD").attributes)


def test_a_complete_phrase_ends_the_turn_sooner_than_an_incomplete_one(fast_voice):
    from ces_nb.emulator.voice import COMPLETE_HANGOVER_MS, HANGOVER_MS

    complete, _ = _spoken_turn(fast_voice, "eos-complete", [("What is my loyalty tier?", 900)])
    incomplete, _ = _spoken_turn(fast_voice, "eos-incomplete", [("I'd like to book a seat on flight", 900)])
    done, cut = _vad(complete), _vad(incomplete)
    assert done["ended by"] == "complete phrase" and done["trailing silence (ms)"] == COMPLETE_HANGOVER_MS
    assert cut["ended by"] == "silence" and cut["trailing silence (ms)"] == HANGOVER_MS
    # The server counts the silence in (perceived latency is from the user's real end of speech).
    root = complete[-1].session_output.diagnostic_info.root_span
    assert root.attributes["perceived latency (ms)"] > COMPLETE_HANGOVER_MS


def test_a_pause_mid_sentence_does_not_split_the_utterance(fast_voice):
    from ces_nb.emulator.voice import COMPLETE_HANGOVER_MS, HANGOVER_MS

    pause_ms = 450  # longer than a complete phrase's hangover, shorter than the normal one
    assert COMPLETE_HANGOVER_MS < pause_ms < HANGOVER_MS
    got, rest = _spoken_turn(fast_voice, "eos-pause", [("I'd like to book a seat on flight", pause_ms), ("SW123", 900)])
    transcripts = [m.recognition_result.transcript for m in got if kind(m) == "recognition_result"]
    said = normalize("I'd like to book a seat on flight SW123")
    assert jiwer.wer(said, transcripts[-1]) <= 0.2, transcripts
    vad = _vad(got)
    assert vad["ended by"] == "complete phrase"
    first = synthesize(normalize("I'd like to book a seat on flight"))
    assert vad["audio duration (ms)"] > first.duration_ms + pause_ms  # one utterance over both parts
    assert not [m for m in rest if kind(m) == "session_output" and m.session_output.turn_completed]  # and no second turn
