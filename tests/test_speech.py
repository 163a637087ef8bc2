"""Offline speech: espeak-ng TTS, pocketsphinx ASR with the app's grammar, and the CES audio codecs."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from ces_nb import audio
from ces_nb.emulator.asr import Recognizer, app_phrases, normalize
from ces_nb.emulator.export import load_export
from ces_nb.emulator.server import demo_app_path
from ces_nb.tts import synthesize


def test_normalize_spells_what_a_recognizer_hears():
    assert normalize("What's the status of flight SW123?") == "what's the status of flight s w one two three"
    assert normalize("Bags & pets, 2 of them!") == "bags and pets two of them"


def test_tts_speaks_with_plausible_duration_and_level():
    speech = synthesize("How many bags can I check?")
    assert speech.sample_rate == 22050 and 1000 < speech.duration_ms < 4000
    assert audio.rms(speech.samples) > 500
    assert len(synthesize("").samples) < speech.sample_rate // 10  # nothing to say, (almost) no audio


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer(app_phrases(load_export(str(demo_app_path()))))


def test_round_trip_through_tts_and_asr_on_demo_utterances(recognizer):
    phrases = app_phrases(load_export(str(demo_app_path())))
    assert len(phrases) >= 10 and "Gold" in phrases
    references, hypotheses = [], []
    for phrase in phrases:
        speech = synthesize(normalize(phrase))
        heard = recognizer.recognize(audio.resample(speech.samples, speech.sample_rate, 16000))
        references.append(normalize(phrase))
        hypotheses.append(heard.transcript)
    error = jiwer.wer(references, hypotheses)
    assert error <= 0.20, list(zip(references, hypotheses))


def test_language_model_takes_over_outside_the_grammar():
    narrow = Recognizer(["hello there"])
    speech = synthesize("the weather is nice today")
    heard = narrow.recognize(audio.resample(speech.samples, speech.sample_rate, 16000))
    assert heard.transcript and heard.source in ("grammar", "language model")
    silence = narrow.recognize(np.zeros(16000, dtype=np.int16))
    assert silence.transcript == ""


@pytest.mark.parametrize("encoding", ["LINEAR16", "MULAW", "ALAW"])
@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
def test_codecs_round_trip_in_every_encoding_and_rate(encoding, rate):
    speech = synthesize("Hello")
    samples = audio.resample(speech.samples, speech.sample_rate, rate)
    data = audio.encode(samples, encoding, rate)
    assert len(data) == len(samples) * audio.BYTES_PER_SAMPLE[encoding]
    back = audio.decode(data, encoding, rate)
    assert len(back) == len(samples)
    # G.711 is lossy; the signal must survive it
    correlation = np.corrcoef(samples.astype(float), back.astype(float))[0, 1]
    assert correlation > 0.99
    wav = audio.to_wav(data, encoding, rate)
    assert wav[:4] == b"RIFF" and audio.read(wav)[1] == rate
    pieces = list(audio.chunks(data, encoding, rate, ms=40))
    assert b"".join(pieces) == data and all(len(p) == rate * 40 // 1000 * audio.BYTES_PER_SAMPLE[encoding] for p in pieces[:-1])


def test_unknown_encoding_is_named():
    with pytest.raises(ValueError, match="LINEAR16, MULAW, ALAW"):
        audio.encode(np.zeros(10, dtype=np.int16), "OGG_OPUS")
