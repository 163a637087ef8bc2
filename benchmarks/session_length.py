"""A turn's cost does not grow with the session's length: turns 191-200 of one session against
turns 1-10 of fresh sessions, side by side in one run.

One session is first talked up to turn 190 (the script, over and over). Then each of its
turns 191-200 alternates with a turn of a fresh session at the same point of the script, so
the long and the short turn see the same machine. That is repeated `--rounds` times, each
round on a new long session, through the official client over gRPC.

The store is the default kind, a SQLite file (in a temp folder); `--db :memory:` for memory.

    python benchmarks/session_length.py [--rounds 3] [--db :memory:]    goal: long p50 <= 1.5x short p50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator_process import EmulatorProcess  # noqa: E402
from emulator_turns import SCRIPT as FULL_SCRIPT, percentile  # noqa: E402

APP = "projects/bench/locations/us/apps/skyway"
SCRIPT = FULL_SCRIPT[:-1]  # its last line says goodbye, which ends the session
LONG_FROM = 191  # turns LONG_FROM..LONG_FROM+9 of the long session


def one_round(client) -> tuple[list[float], list[float]]:
    long_name = f"{APP}/sessions/long-{uuid.uuid4().hex[:8]}"
    short_name = f"{APP}/sessions/short-{uuid.uuid4().hex[:8]}"

    def turn(name: str, text: str) -> float:
        t0 = time.perf_counter()
        client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})
        return time.perf_counter() - t0

    for n in range(LONG_FROM - 1):
        turn(long_name, SCRIPT[n % len(SCRIPT)])
    long_times, short_times = [], []
    for n in range(10):
        text = SCRIPT[(LONG_FROM - 1 + n) % len(SCRIPT)]  # the same text both ways
        long_times.append(turn(long_name, text))
        short_times.append(turn(short_name, text))
    return short_times, long_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default=None, help="the store (default: a SQLite file in a temp folder, the default kind)")
    parser.add_argument("--workers", type=int, default=None, help="emulator worker processes (default: the emulator's own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "emulator.db")
        store = "memory (:memory:)" if db == ":memory:" else f"SQLite file {db}"
        server = EmulatorProcess("--db", db, *(["--workers", str(args.workers)] if args.workers else []))
        try:
            channel = grpc.insecure_channel(server.address)
            client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
            short, long = [], []
            for _ in range(args.rounds):
                s, lt = one_round(client)
                short += s
                long += lt
            channel.close()
        finally:
            server.stop()
    print(f"store: {store}; {args.rounds} rounds, each: one session to turn {LONG_FROM + 9}, "
          f"its last 10 turns interleaved with turns 1-10 of a fresh session")
    print(f"{'':24}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}")
    for label, values in ((f"turns 1-10", short), (f"turns {LONG_FROM}-{LONG_FROM + 9}", long)):
        print(f"{label:24}{percentile(values, 50) * 1e3:10.2f}{percentile(values, 90) * 1e3:10.2f}"
              f"{statistics.mean(values) * 1e3:10.2f}")
    print(f"ratio long/short: p50 {percentile(long, 50) / percentile(short, 50):.2f}x, "
          f"mean {statistics.mean(long) / statistics.mean(short):.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()
