"""One client never stalls the others: a neighbour's turn latency while another client sends its
worst inputs, against the same neighbour while that client sits idle, in one run.

The worst inputs are each as large as the emulator accepts, or as slow to match as a client can
make them: a pathological mock pattern (`(a|a)+b` against a long run of "a"), a maximal text, and
maximal variables and tool arguments, plus the same past the limits (refused). For a like-for-like
reading it also measures the neighbour while the other client sends ordinary turns as fast as
it can: what the worst inputs cost beyond any busy client. The other client runs in its own
process, so building its big requests never holds the neighbour's GIL (in one process it did:
part of what this used to measure was the client, not the emulator). Windows of the three kinds take turns,
so all see the same machine. The store is the default kind: a SQLite file.

    python benchmarks/isolation.py [--rounds 6] [--window 2.5]      goal: worst p50 <= 1.5x quiet p50
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from emulator_process import EmulatorProcess  # noqa: E402

APP = "projects/bench/locations/us/apps/skyway"
BIG = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def worst_inputs(sessions, tools):
    """Callables, one per hostile input; each must be refused or answered, never hang."""
    names = (f"{APP}/sessions/noisy-{n}" for n in itertools.count())
    max_text = "hello " * (64 * 1024 // 6)
    max_vars = {f"k{i}": "v" * 100 for i in range(2_300)}  # just under 256 KiB
    too_big_vars = {f"k{i}": "v" * 100 for i in range(20_000)}
    pattern = ces_v1.MockConfig(
        mocked_tool_calls=[ces_v1.MockedToolCall(tool_id="get_flight_status", expected_args_pattern={"flight_number": "(a|a)+b"},
                                                 mock_response={"status": "mocked"})],
        unmatched_tool_call_behavior=ces_v1.MockConfig.UnmatchedToolCallBehavior.FAIL,
    )

    def turn(*inputs):
        return lambda: sessions.run_session(request={"config": {"session": next(names)}, "inputs": list(inputs)}, timeout=120)

    def execute(args, mock=None):
        request = ces_v1.ExecuteToolRequest(tool=f"{APP}/tools/get_flight_status", args=args, mock_config=mock)
        return lambda: tools.execute_tool(request=request, timeout=120)

    return {
        "pathological mock pattern": execute({"flight_number": "a" * 60_000}, pattern),
        "maximal text": turn({"text": max_text}),
        "maximal variables": turn({"variables": max_vars}),
        "oversized variables": turn({"variables": too_big_vars}),
        "maximal tool args": execute({"flight_number": "x" * 250_000}),
        "oversized tool args": execute({"flight_number": "x" * 4_000_000}),
    }


MODES = ("quiet", "ordinary", "worst")


def other_client(address: str, mode, stop, reports) -> None:
    """The other client, in its own process: idle, ordinary turns, or its worst inputs, as `mode` says."""
    channel = grpc.insecure_channel(address, options=BIG)
    sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    tools = ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel))
    attacks = worst_inputs(sessions, tools)
    plain = (f"{APP}/sessions/ordinary-{n}" for n in itertools.count())
    ordinary = lambda: sessions.run_session(request={"config": {"session": next(plain)}, "inputs": [{"text": "Hello"}]})  # noqa: E731
    outcomes: dict[str, str] = {}
    for attack in attacks.values():  # warm the paths
        try:
            attack()
        except exceptions.GoogleAPICallError:
            pass
    reports.put("ready")
    worst = itertools.cycle(attacks.items())
    while not stop.is_set():
        now = MODES[mode.value]
        if now == "quiet":
            time.sleep(0.02)
            continue
        name, attack = next(worst) if now == "worst" else ("ordinary", ordinary)
        try:
            attack()
            outcomes.setdefault(name, "answered")
        except exceptions.GoogleAPICallError as exc:
            outcomes[name] = f"refused: {exc.grpc_status_code.name}"
    for item in outcomes.items():
        reports.put(item)
    reports.put("done")
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6, help="quiet/noisy window pairs")
    parser.add_argument("--window", type=float, default=2.5, help="seconds per window")
    parser.add_argument("--workers", type=int, default=None, help="emulator processes (default: the emulator's, the cores)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ces-nb-isolation-")
    server = EmulatorProcess("--db", f"{folder}/emulator.db", *(["--workers", str(args.workers)] if args.workers else []))
    print(f"store: SQLite file (the default kind), {folder}/emulator.db; workers: {args.workers or 'the default (the cores)'}")
    try:
        ctx = multiprocessing.get_context("spawn")  # its own process: its work must not hold this one's GIL
        mode = ctx.Value("i", MODES.index("quiet"))
        stop = ctx.Event()
        reports = ctx.Queue()
        outcomes: dict[str, str] = {}
        neighbour = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=grpc.insecure_channel(server.address)))
        counter = itertools.count()

        def neighbour_turns(seconds: float) -> list[float]:
            times = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                name = f"{APP}/sessions/neighbour-{next(counter)}"
                started = time.perf_counter()
                neighbour.run_session(request={"config": {"session": name}, "inputs": [{"text": "What's my loyalty tier?"}]})
                times.append(time.perf_counter() - started)
            return times

        neighbour_turns(1.0)  # warm its path
        other = ctx.Process(target=other_client, args=(server.address, mode, stop, reports), daemon=True)
        other.start()
        if reports.get(timeout=120) != "ready":
            raise RuntimeError("the other client did not start")
        times: dict[str, list[float]] = {"quiet": [], "ordinary": [], "worst": []}
        for _ in range(args.rounds):
            for kind in times:
                mode.value = MODES.index(kind)
                time.sleep(0.3)  # let the other client's request in flight finish
                times[kind] += neighbour_turns(args.window)
        stop.set()
        while True:
            item = reports.get(timeout=120)
            if item == "done":
                break
            outcomes[item[0]] = item[1]
        other.join(30)

        p50 = {k: statistics.median(v) for k, v in times.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
        print(f"isolation: a neighbour's RunSession while another client is quiet, busy, or sends its worst inputs "
              f"({args.rounds} x {args.window:g} s windows each)")
        for name, outcome in sorted(outcomes.items()):
            print(f"  {name:28s} {outcome}")
        for kind, values in times.items():
            print(f"  neighbour, other client {kind:9s} p50 {p50[kind] * 1000:6.1f} ms  p90 {p90[kind] * 1000:6.1f} ms  ({len(values)} turns)")
        print(f"  worst vs quiet:    p50 {p50['worst'] / p50['quiet']:.2f}x  p90 {p90['worst'] / p90['quiet']:.2f}x   (goal: p50 <= 1.5x)")
        print(f"  worst vs ordinary: p50 {p50['worst'] / p50['ordinary']:.2f}x  p90 {p90['worst'] / p90['ordinary']:.2f}x   "
              f"(what the worst inputs cost beyond a busy client)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
