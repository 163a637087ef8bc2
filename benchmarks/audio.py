"""Speech speed, in one run: real-time factors (processing time / audio duration) for
ASR (pocketsphinx with the demo app's grammar; goal <= 0.2) and TTS (espeak-ng; goal <= 0.05)
over the demo app's example utterances; then end of speech -> first agent audio through the
emulator's BidiRunSession (goal <= 400 ms), alone and with 20 sessions at once (RTF < 1).

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


def voice_sessions(concurrent: int = 20) -> None:
    """End of speech -> first agent audio, alone and with `concurrent` sessions at once."""
    import statistics
    import sys
    import threading
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from emulator_process import EmulatorProcess
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_store import default_store, describe
    from test_voice import Stream, client_for, speech

    db = default_store()
    print(describe(db))
    server = EmulatorProcess("--db", db, "--audio-pace", "0")
    data = speech("What is my loyalty tier?", "LINEAR16", 16000)
    speech_s = len(data) / 2 / 16000

    def one(i: int, out: list) -> None:
        config = {"session": f"projects/b/locations/us/apps/skyway/sessions/v{i}-{time.time_ns()}",
                  "input_audio_config": {"audio_encoding": "LINEAR16", "sample_rate_hertz": 16000},
                  "output_audio_config": {"audio_encoding": "LINEAR16", "sample_rate_hertz": 16000}}
        stream = Stream(client_for(server), config)
        stream.send_audio(data, "LINEAR16", 16000)
        got = stream.until_completed()
        stream.close()
        root = got[-1].session_output.diagnostic_info.root_span
        out.append(root.attributes["perceived latency (ms)"])

    try:
        alone: list = []
        for i in range(5):
            one(i, alone)
        crowd: list = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(100 + i, crowd)) for i in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    print(f"end of speech -> first agent audio: p50 {statistics.median(alone):.0f} ms alone "
          f"({statistics.median(alone) / 400:.2f} of the 400 ms goal; the endpointer's 600 ms of trailing silence comes first)")
    print(f"{concurrent} sessions at once: p50 {statistics.median(crowd):.0f} ms, max {max(crowd):.0f} ms; "
          f"real-time factor {wall / (concurrent * speech_s):.2f} ({wall:.1f} s wall for {concurrent * speech_s:.1f} s of speech)")


if __name__ == "__main__":
    main()
    voice_sessions()
