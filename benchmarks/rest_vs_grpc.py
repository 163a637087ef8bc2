"""REST vs gRPC: the same 10-turn conversation (emulator_turns.SCRIPT) through the official
SessionServiceClient, over gRPC and over its REST transport (`--rest-port`), against one
emulator on a SQLite file store in a temp dir (the default kind of store). Rounds are
interleaved (one of each, then again), each round a fresh session; round 0 warms up.
Prints p50 and mean per turn and the ratio REST/gRPC. Goal: <= 1.3x.

    python benchmarks/rest_vs_grpc.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from emulator_process import EmulatorProcess  # noqa: E402

try:
    from emulator_turns import SCRIPT  # noqa: E402
except ImportError:  # the same script, should that module move
    SCRIPT = ["Hello", "What's the status of flight SW12?", "How many bags can I check?", "Can I bring my cat on the plane?",
              "What is my loyalty tier?", "Are there any travel advisories for Denver?", "Can you send me my boarding pass?",
              "What's the status of flight SW34?", "How many bags can I check?", "That's all, thanks. Goodbye!"]


def one_round(client, label: str) -> list[float]:
    name = f"projects/b/locations/us/apps/skyway/sessions/bench-{label}-{uuid.uuid4().hex[:12]}"
    times = []
    for text in SCRIPT:
        t0 = time.perf_counter()
        response = client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})
        times.append(time.perf_counter() - t0)
        assert response.outputs and response.outputs[-1].turn_completed, (label, text)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import ces_v1
    from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

    with tempfile.TemporaryDirectory(prefix="ces-bench-") as tmp:
        server = EmulatorProcess("--db", str(Path(tmp) / "emulator.db"), rest_port=0)
        channel = grpc.insecure_channel(server.address)
        clients = {
            "gRPC": ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
            "REST": ces_v1.SessionServiceClient(transport="rest", client_options={"api_endpoint": server.rest_url},
                                                credentials=AnonymousCredentials()),
        }
        times: dict[str, list[float]] = {label: [] for label in clients}
        try:
            for r in range(args.rounds + 1):
                order = list(clients) if r % 2 else list(reversed(clients))  # neither always goes first
                for label in order:
                    measured = one_round(clients[label], label)
                    if r:
                        times[label] += measured
        finally:
            channel.close()
            server.stop()

    grpc_times, rest_times = times["gRPC"], times["REST"]
    print(f"{len(SCRIPT)}-turn conversation x {args.rounds} rounds ({len(grpc_times)} turns each way), interleaved, "
          f"SQLite file store")
    print(f"{'':34}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}")
    for label, values in (("official client over gRPC", grpc_times), ("official client over REST", rest_times)):
        ordered = sorted(values)
        print(f"{label:34}{statistics.median(values) * 1e3:10.2f}{ordered[int(0.9 * (len(ordered) - 1))] * 1e3:10.2f}"
              f"{statistics.mean(values) * 1e3:10.2f}")
    print(f"ratio REST/gRPC: p50 {statistics.median(rest_times) / statistics.median(grpc_times):.2f}x, "
          f"mean {statistics.mean(rest_times) / statistics.mean(grpc_times):.2f}x  (goal <= 1.3x)")


if __name__ == "__main__":
    main()
