"""ces_nb's client overhead: Session.send vs the raw official SessionServiceClient.run_session,
same emulator, same 10-turn script, turns interleaved so both see the same machine state, and
the order alternating turn by turn (raw first, then ces_nb first), so neither always runs on a
session the other just warmed. The store is the default kind, a SQLite file.

    python benchmarks/client_overhead.py [--rounds 30]      goal: <= 1.05x per turn
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator_process import EmulatorProcess  # noqa: E402
from emulator_turns import SCRIPT, percentile  # noqa: E402
from bench_store import default_store, describe  # noqa: E402

import ces_nb  # noqa: E402

APP = "projects/bench/locations/us/apps/skyway"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    db = default_store()
    server = EmulatorProcess("--db", db)
    try:
        raw = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=grpc.insecure_channel(server.address)))
        client = ces_nb.connect(APP, endpoint=server.address)
        raw_times, nb_times = [], []
        for r in range(args.rounds + 1):
            name = f"{APP}/sessions/raw-{uuid.uuid4().hex[:8]}"
            session = client.session()
            for n, text in enumerate(SCRIPT):
                sides = [("raw", lambda: raw.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})),
                         ("nb", lambda: session.send(text))]
                for side, call in sides if (r + n) % 2 == 0 else reversed(sides):
                    t0 = time.perf_counter()
                    call()
                    elapsed = time.perf_counter() - t0
                    if r:  # round 0 warms up
                        (raw_times if side == "raw" else nb_times).append(elapsed)
    finally:
        server.stop()
    print(describe(db))
    print(f"{len(SCRIPT)}-turn script x {args.rounds} rounds, {len(raw_times)} turns each, interleaved, order alternating")
    print(f"{'':38}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, values in (("raw SessionServiceClient.run_session", raw_times), ("ces_nb Session.send", nb_times)):
        print(f"{label:38}" + "".join(f"{percentile(values, q) * 1e3:10.2f}" for q in (50, 90, 99, 100)))
    print(f"ratio Session.send / run_session: p50 {percentile(nb_times, 50) / percentile(raw_times, 50):.3f}x, "
          f"mean {statistics.mean(nb_times) / statistics.mean(raw_times):.3f}x, "
          f"mean without the slowest 1% {trimmed_mean(nb_times) / trimmed_mean(raw_times):.3f}x  (goal <= 1.05x)")


def trimmed_mean(values: list[float]) -> float:
    ordered = sorted(values)
    return statistics.mean(ordered[: max(1, len(ordered) - len(ordered) // 100)])


if __name__ == "__main__":
    main()
