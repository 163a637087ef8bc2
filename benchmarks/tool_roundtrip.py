"""Client tool round trip: from receiving a turn's tool_calls to the continuation turn
completed, answered by a Python handler (no UI), vs a plain text turn; same emulator,
interleaved; the text turn is likewise a session's second turn, one model call. Goal: <= 1.2x.

    python benchmarks/tool_roundtrip.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from emulator_process import EmulatorProcess  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import default_store, describe  # noqa: E402

import ces_nb  # noqa: E402

BOOK = "I'd like to book a seat on flight SW123"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    db = default_store()
    print(describe(db))
    server = EmulatorProcess("--db", db)
    try:
        client = ces_nb.connect("projects/bench/locations/us/apps/skyway", endpoint=server.address)
        round_trips, text_turns = [], []
        for r in range(args.rounds + 1):
            session = client.session()
            session.client_tool("select_seat")(lambda **a: {"seat": "14C", "confirmed": True, "price": 129.0})
            session.auto_answer = False  # we time the answer ourselves
            turn = session.send(BOOK)
            (call,) = turn.tool_calls
            t0 = time.perf_counter()  # the tool_calls are in hand
            proposal = session.tools.propose(call)
            continuation = session.respond({call.id: proposal.response}, how="handler")
            t1 = time.perf_counter()
            assert "14C" in continuation.text and continuation.completed
            # The text turn is also a session's second turn, answered by one model call.
            text_session = client.session()
            text_session.send("Hello")
            t2 = time.perf_counter()
            text_session.send("What is my loyalty tier?")
            t3 = time.perf_counter()
            if r:
                round_trips.append(t1 - t0)
                text_turns.append(t3 - t2)
    finally:
        server.stop()
    p50_rt, p50_text = statistics.median(round_trips), statistics.median(text_turns)
    print(f"{args.rounds} rounds, interleaved")
    print(f"tool_calls -> handler -> continuation completed   p50 {p50_rt * 1e3:7.2f} ms")
    print(f"plain text turn                                    p50 {p50_text * 1e3:7.2f} ms")
    print(f"ratio: p50 {p50_rt / p50_text:.2f}x, mean {statistics.mean(round_trips) / statistics.mean(text_turns):.2f}x  (goal <= 1.2x)")


if __name__ == "__main__":
    main()
