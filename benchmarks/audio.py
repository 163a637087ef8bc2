"""Speech speed as real-time factors (processing time / audio duration), in one run:
ASR (pocketsphinx with the demo app's grammar; goal <= 0.2) and TTS (espeak-ng; goal <= 0.05),
over the demo app's example utterances.

    python benchmarks/audio.py
"""

from __future__ import annotations

import time

from ces_nb import audio
from ces_nb.emulator.asr import Recognizer, app_phrases, normalize
from ces_nb.emulator.export import load_export
from ces_nb.emulator.server import demo_app_path
from ces_nb.tts import synthesize


def main() -> None:
    phrases = [normalize(p) for p in app_phrases(load_export(str(demo_app_path())))]
    recognizer = Recognizer(phrases)
    synthesize("warm up")
    tts_time = asr_time = audio_ms = 0.0
    for phrase in phrases * 3:
        t0 = time.perf_counter()
        speech = synthesize(phrase)
        t1 = time.perf_counter()
        pcm = audio.resample(speech.samples, speech.sample_rate, 16000)
        t2 = time.perf_counter()
        recognizer.recognize(pcm)
        t3 = time.perf_counter()
        tts_time += t1 - t0
        asr_time += t3 - t2
        audio_ms += speech.duration_ms
    seconds = audio_ms / 1000
    print(f"{len(phrases) * 3} utterances, {seconds:.1f} s of speech")
    print(f"TTS real-time factor {tts_time / seconds:.4f}  (goal <= 0.05)")
    print(f"ASR real-time factor {asr_time / seconds:.4f}  (goal <= 0.2)")


if __name__ == "__main__":
    main()
