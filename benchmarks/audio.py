"""Speech speed, in one run: real-time factors (processing time / audio duration) for
ASR (pocketsphinx with the demo app's grammar; goal <= 0.2) and TTS (espeak-ng; goal <= 0.05)
over the demo app's example utterances; then the voice latency a caller hears (goal <= 400 ms),
measured at the client from the real end of speech.

    python benchmarks/audio.py                       # this tree
    python benchmarks/audio.py --baseline 00d1a0a    # and an older commit's emulator, interleaved

Latency: synthesized speech, then silence, is streamed through BidiRunSession in real time
(CHUNK_MS pieces paced by the wall clock, as a microphone sends them). The clock starts when
the chunk holding the last speech sample (not the trailing silence) is sent, and stops when
the first agent audio chunk arrives. So it includes the endpointer's hangover, which the
server's own spans start after. With --baseline REF, `git archive REF ces_nb` runs as a
second emulator and the two are measured turn by turn, interleaved (the machine is shared).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ces_nb import audio
from ces_nb.emulator.asr import Recognizer, app_phrases, normalize
from ces_nb.emulator.export import load_export
from ces_nb.emulator.server import demo_app_path
from ces_nb.tts import synthesize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_store import default_store, describe  # noqa: E402
from emulator_process import EmulatorProcess  # noqa: E402

RATE, ENCODING = 16000, "LINEAR16"
CHUNK_MS = 40            # what CES clients send per message (40-120 ms); the smallest
LEAD_MS = 200            # silence before the speech
MAX_SILENCE_MS = 3000    # a microphone keeps sending silence until the agent answers, up to this
SPEECH_LEVEL = 200       # |sample| above this is speech (espeak's tail below it is silence)
GOAL_MS = 400
# Utterances that are not phrases of the demo grammar: the endpointer waits its full hangover.
OFF_GRAMMAR = ["I need some help with my trip", "Do you have wifi on board"]


def real_time_factors() -> None:
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


def spoken(text: str) -> tuple[np.ndarray, int]:
    """(lead-in silence + speech at RATE, index just past the last speech sample)."""
    speech = synthesize(normalize(text))
    samples = audio.resample(speech.samples, speech.sample_rate, RATE)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SPEECH_LEVEL)
    lead = np.zeros(RATE * LEAD_MS // 1000, np.int16)
    return np.concatenate([lead, samples]), len(lead) + int(loud[-1]) + 1


def one_turn(server: EmulatorProcess, text: str, samples: np.ndarray, speech_end: int) -> float | None:
    """Stream `samples` then silence in real time; ms from sending the last speech sample to
    the first agent audio chunk (None when the agent's turn has no audio: a client tool call)."""
    from google.cloud import ces_v1
    from test_voice import Stream, client_for

    config = {"session": f"projects/b/locations/us/apps/skyway/sessions/rt-{time.time_ns()}",
              "input_audio_config": {"audio_encoding": ENCODING, "sample_rate_hertz": RATE},
              "output_audio_config": {"audio_encoding": ENCODING, "sample_rate_hertz": RATE}}
    stream = Stream(client_for(server), config)
    first_audio = threading.Event()
    arrived: list[float] = []
    silent_turn: list[bool] = []

    def watch() -> None:  # the first agent audio, timed as it arrives
        while True:
            message = stream.replies.get()
            if message is None or isinstance(message, Exception):
                first_audio.set()
                return
            if ces_v1.BidiSessionServerMessage.pb(message).WhichOneof("message_type") == "session_output":
                if message.session_output.audio:
                    arrived.append(time.perf_counter())
                    first_audio.set()
                    return
                if message.session_output.turn_completed:
                    silent_turn.append(True)
                    first_audio.set()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    chunk = RATE * CHUNK_MS // 1000
    silence = np.zeros(chunk, np.int16)
    sent_end: float | None = None
    t0 = time.perf_counter()
    n = 0
    try:
        while not first_audio.is_set():
            start = n * chunk
            if start >= len(samples) + RATE * MAX_SILENCE_MS // 1000:
                break
            piece = samples[start:start + chunk] if start < len(samples) else silence
            if len(piece) < chunk:
                piece = np.concatenate([piece, silence[:chunk - len(piece)]])
            # A microphone hands a chunk over once it has recorded all of it.
            delay = t0 + (n + 1) * CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stream.requests.put(ces_v1.BidiSessionClientMessage(
                realtime_input=ces_v1.SessionInput(audio=audio.encode(piece, ENCODING, RATE))))
            if sent_end is None and start + chunk >= speech_end:
                sent_end = time.perf_counter()
            n += 1
        first_audio.wait(30)
    finally:
        stream.close()
    if silent_turn:
        return None
    if not arrived or sent_end is None:
        raise RuntimeError(f"no agent audio for {text!r} from {server.address}: {server.output()[-2000:]}")
    return (arrived[0] - sent_end) * 1000


def baseline_tree(ref: str) -> str:
    """`git archive REF ces_nb` in a temp folder, for PYTHONPATH."""
    folder = tempfile.mkdtemp(prefix="ces-nb-baseline-")
    atexit.register(shutil.rmtree, folder, True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", ref, "ces_nb"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(baseline: str | None, repeats: int, per_utterance: bool = False) -> None:
    db = default_store()
    print(describe(db, "one per emulator"))
    servers = {"this tree": EmulatorProcess("--db", db, "--audio-pace", "1")}
    if baseline:
        tree = baseline_tree(baseline)
        # PYTHONSAFEPATH: the cwd must not shadow the archived package; no .pyc in the temp tree.
        servers[f"baseline {baseline}"] = EmulatorProcess(
            "--db", default_store("baseline.db"), "--audio-pace", "1",
            env={"PYTHONPATH": tree, "PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    phrases = [p for p in app_phrases(load_export(str(demo_app_path()))) if len(p.split()) > 2 and "Goodbye" not in p]
    skipped: set[str] = set()
    utterances = [(p, "grammar phrase") for p in phrases] + [(p, "not a phrase") for p in OFF_GRAMMAR]
    audio_for = {text: spoken(text) for text, _ in utterances}
    results: dict[tuple[str, str], list[float]] = {}
    by_text: dict[tuple[str, str], list[float]] = {}
    try:
        for label, server in servers.items():  # warm up each (first turn loads the decoder)
            one_turn(server, phrases[0], *audio_for[phrases[0]])
        for _ in range(repeats):
            for text, kind in utterances:
                for label, server in servers.items():  # interleaved, so load hits both alike
                    if text in skipped:
                        continue
                    ms = one_turn(server, text, *audio_for[text])
                    if ms is None:
                        skipped.add(text)
                    else:
                        results.setdefault((label, kind), []).append(ms)
                        by_text.setdefault((label, text), []).append(ms)
    finally:
        for server in servers.values():
            server.stop()
    print(f"end of speech -> first agent audio, at the client, speech streamed in real time ({CHUNK_MS} ms chunks), "
          f"{repeats} x {len(utterances)} utterances:")
    for (label, kind), values in results.items():
        p50, p90 = statistics.median(values), percentile(values, 90)
        print(f"  {label:<22} {kind:<15} p50 {p50:4.0f} ms  p90 {p90:4.0f} ms  ({p50 / GOAL_MS:.2f} of the {GOAL_MS} ms goal; "
              f"n={len(values)}, range {min(values):.0f}-{max(values):.0f})")
    if per_utterance:
        for (label, text), values in by_text.items():
            print(f"    {label:<22} {text:<45} " + " ".join(f"{v:.0f}" for v in values))
    if skipped:
        print(f"  not timed (the agent answers with a client tool call, no audio): {', '.join(sorted(skipped))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REF", help="also measure the emulator of this git commit, interleaved")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the utterances (default 2)")
    parser.add_argument("--per-utterance", action="store_true", help="print every utterance's figures too")
    parser.add_argument("--skip-rtf", action="store_true", help="only the latency part")
    args = parser.parse_args()
    logging.getLogger("ces_nb").setLevel(logging.ERROR)  # the demo app's load report, once per load_export
    if not args.skip_rtf:
        real_time_factors()
    latency(args.baseline, args.repeats, args.per_utterance)


if __name__ == "__main__":
    main()
