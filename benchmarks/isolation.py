"""One client never stalls the others: a neighbour's turn latency while another client sends its
worst inputs, against the same neighbour while that client sits idle, in one run.

The worst inputs are each as large as the emulator accepts, or as slow to match as a client can
make them: a pathological mock pattern (`(a|a)+b` against a long run of "a"), a maximal text, and
maximal variables and tool arguments, plus the same past the limits (refused). For a like-for-like
reading it also measures the neighbour while the other client sends ordinary turns as fast as
it can: what the worst inputs cost beyond any busy client. The other client runs in its own
process, so building its big requests never holds the neighbour's GIL (in one process it did:
part of what this used to measure was the client, not the emulator), and it builds each request
once, as a load generator does (see below). Windows of each kind take
turns, so all see the same machine. The store is the default kind: a SQLite file.

Where the time goes, printed in the same run:
* placement: with `--workers N` the kernel (SO_REUSEPORT) puts each connection on a worker, so
  the neighbour shares the other client's event loop or not, by chance. The neighbour holds one
  connection on the other client's worker and, with 2+ workers, one on another worker, and
  alternates its turns between them: both placements are measured every window.
* CPU seconds per second of the other client's process, the emulator's processes, the
  neighbour's and the whole machine (other users' too), in each kind of window.
* a secondary reading, labelled "at R/s": the other client sends ordinary turns, then its worst
  inputs, at one fixed rate (`--rate`, the same for both), rather than as fast as it can; so
  ordinary and worst put the same number of requests on the emulator and differ only in what
  they send.

    python benchmarks/isolation.py [--rounds 6] [--window 2.5] [--rate 10]    goal: worst p50 <= 1.5x quiet p50

What it showed on a 2-core machine (December 2026). Before: worst vs quiet 3.37x / 2.07x / 2.54x
(same worker / other worker / both), and any client busy as fast as it can (ordinary vs quiet)
2.39x / 1.88x / 2.19x, with the machine only ~1.2 CPU s/s busy. Three causes, and their fixes:
* placement: left to the scheduler, a worker woken by the neighbour's request often landed on
  the core the other client's worker held (pinning the two by hand: 13.8 -> 9.6 ms a turn).
  Each worker now has a core of its own (workers.py, `--pin-workers`): other worker 2.07x -> 1.63x.
* one event loop: two turns at once share it, so on the same worker each took as long as both.
  Now a client that keeps the emulator busy gives way, between the steps of its requests, to a
  lighter one (fair_share.py): ordinary vs quiet on the same worker 1.97x -> 1.22x.
* the GIL: the loop's threads (the store's writer encoding 256 KiB of state, input conversion,
  the database driver) kept it up to 5 ms once the loop asked for it back; the emulator's switch
  interval is 0.5 ms (cli.py): same worker, worst, 2.07x -> 1.74x, and with checkpoints around
  the store write 1.54x.
After, two runs: worst vs quiet 1.59x / 1.35x / 1.47x and 1.54x / 1.38x / 1.45x; ordinary vs
quiet 1.23x / 1.21x / 1.22x and 1.28x / 1.15x / 1.22x (a worker's tool workers share its core:
run anywhere, the other client's tool code reached the neighbour's core, and worst vs quiet read
1.71-1.79x / 1.44x / 1.52-1.55x). Then (same month), in the emulator: a request waiting on a
thread or a tool worker no longer holds parked ones back (fair_share.elsewhere), a turn copies
its inputs three times fewer, the store's state passes and the record have checkpoints of their
own, playback no longer lowers a 64 KiB message for each scripted turn, and an oversized request
is refused from its framing, not a copy of it: five runs read 1.38-1.60x / 1.41-1.52x /
1.41-1.50x. And in this benchmark: the other client builds each request once. Made from dicts
each time, its 2 MiB of variables cost its process ~0.24 CPU s/s, which the scheduler ran on the
less busy core (the other worker's, where half the neighbour's turns run); now 0.11 CPU s/s, while it sends ~40% more worst requests
(58 -> 77-83 a second): three runs read 1.29-1.32x / 1.24-1.36x / 1.27-1.33x, ordinary vs quiet
1.20-1.24x. What is left is any busy client's share of the loop (ordinary vs quiet), and
stretches between two checkpoints (ADK's passes over 2 300 state keys in a maximal-variables
turn; gRPC's own copies of a 4 MiB request before any code of ours sees it). At a fixed rate the
worst inputs cost about what ordinary turns do (worst at 10/s vs ordinary at 10/s: ~1.00x).
(Running turns one at a time, first come first served, was tried before: 2.99x on the same worker,
as a short turn then waits for the whole of a long one.)
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
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
from worker_connections import connected_workers  # noqa: E402

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
        # Built once: made from the dicts each time, 2 MiB of variables cost this process ~0.25 CPU
        # s/s, and on 2 cores the scheduler ran it beside the other worker (the neighbour's).
        request = ces_v1.RunSessionRequest(inputs=list(inputs))

        def send():
            request.config.session = next(names)
            return sessions.run_session(request=request, timeout=120)

        return send

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


MODES = ("quiet", "ordinary", "worst", "ordinary at rate", "worst at rate")


def other_client(address: str, mode, stop, reports, sent, rate: float) -> None:
    """The other client, in its own process: idle, ordinary turns, or its worst inputs, as `mode`
    says; as fast as it can, or (the "at rate" modes) `rate` requests a second."""
    channel = grpc.insecure_channel(address, options=BIG)
    sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    tools = ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel))
    attacks = worst_inputs(sessions, tools)
    plain = (f"{APP}/sessions/ordinary-{n}" for n in itertools.count())
    hello = ces_v1.RunSessionRequest(inputs=[{"text": "Hello"}])

    def ordinary():
        hello.config.session = next(plain)
        return sessions.run_session(request=hello)
    outcomes: dict[str, str] = {}
    for attack in attacks.values():  # warm the paths
        try:
            attack()
        except exceptions.GoogleAPICallError:
            pass
    reports.put("ready")
    worst = itertools.cycle(attacks.items())
    next_send = time.perf_counter()
    while not stop.is_set():
        now = MODES[mode.value]
        if now == "quiet":
            time.sleep(0.02)
            continue
        if now.endswith("at rate"):  # the secondary reading: one request every 1/rate s, never a burst to catch up
            next_send = max(next_send + 1 / rate, time.perf_counter())
            time.sleep(max(0.0, next_send - time.perf_counter()))
        name, attack = next(worst) if now.startswith("worst") else ("ordinary", ordinary)
        try:
            attack()
            outcomes.setdefault(name, "answered")
        except exceptions.GoogleAPICallError as exc:
            outcomes[name] = f"refused: {exc.grpc_status_code.name}"
        with sent.get_lock():
            sent.value += 1
    for item in outcomes.items():
        reports.put(item)
    reports.put("done")
    channel.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (all processes, other users' too)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def neighbour_channels(address: str, noisy_worker: int | None, workers: list[int], call) -> dict[str, object]:
    """A neighbour connection on the other client's worker and, with 2+ workers, one on another:
    each new channel gets its own connection, which the kernel places; keep trying up to 40."""
    wanted = {"same worker": noisy_worker} if len(workers) < 2 else {"same worker": noisy_worker, "other worker": None}
    kept: dict[str, object] = {}
    for _ in range(40):
        before = set(connected_workers(os.getpid(), workers))
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        call(client)  # connects it
        new = {a: w for a, w in connected_workers(os.getpid(), workers).items() if a not in before}
        worker = next(iter(new.values()), None)
        placement = "same worker" if worker == noisy_worker else "other worker"
        if worker is not None and placement in wanted and placement not in kept:
            kept[placement] = client
        else:
            channel.close()
        if len(kept) == len(wanted):
            break
    return {placement: kept[placement] for placement in wanted if placement in kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of windows (one of each kind a round)")
    parser.add_argument("--window", type=float, default=2.5, help="seconds per window")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second of the other client in the secondary reading")
    parser.add_argument("--workers", type=int, default=None, help="emulator processes (default: the emulator's, the cores)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ces-nb-isolation-")
    server = EmulatorProcess("--db", f"{folder}/emulator.db", *(["--workers", str(args.workers)] if args.workers else []))
    print(f"store: SQLite file (the default kind), {folder}/emulator.db; workers: {args.workers or 'the default (the cores)'}; "
          f"cores: {os.cpu_count()}")
    try:
        ctx = multiprocessing.get_context("spawn")  # its own process: its work must not hold this one's GIL
        mode = ctx.Value("i", MODES.index("quiet"))
        sent = ctx.Value("i", 0)
        stop = ctx.Event()
        reports = ctx.Queue()
        outcomes: dict[str, str] = {}
        counter = itertools.count()

        def turn(client) -> float:
            name = f"{APP}/sessions/neighbour-{next(counter)}"
            started = time.perf_counter()
            client.run_session(request={"config": {"session": name}, "inputs": [{"text": "What's my loyalty tier?"}]})
            return time.perf_counter() - started

        other = ctx.Process(target=other_client, args=(server.address, mode, stop, reports, sent, args.rate), daemon=True)
        other.start()
        if reports.get(timeout=120) != "ready":
            raise RuntimeError("the other client did not start")
        workers = server.workers() or [server.pid]
        emulator_pids = [server.pid, *[w for w in workers if w != server.pid]]
        noisy_worker = next(iter(connected_workers(other.pid, workers).values()), None)
        neighbours = neighbour_channels(server.address, noisy_worker, workers, turn)
        for client in neighbours.values():  # warm its path
            for _ in range(10):
                turn(client)

        def neighbour_turns(seconds: float) -> dict[str, list[float]]:
            times: dict[str, list[float]] = {p: [] for p in neighbours}
            deadline = time.perf_counter() + seconds
            for placement in itertools.cycle(neighbours):  # one turn at a time, alternating placements
                if time.perf_counter() >= deadline:
                    break
                times[placement].append(turn(neighbours[placement]))
            return times

        times = {kind: {p: [] for p in neighbours} for kind in MODES}
        # CPU seconds used during each kind of window: the other client, the emulator, this process, the machine
        cpu = {kind: dict.fromkeys(("other client", "emulator", "neighbour", "machine", "wall", "sent"), 0.0) for kind in MODES}

        def readings() -> dict[str, float]:
            return {"other client": cpu_seconds(other.pid), "emulator": sum(map(cpu_seconds, emulator_pids)),
                    "neighbour": cpu_seconds(os.getpid()), "machine": machine_busy_seconds(), "wall": time.perf_counter(),
                    "sent": sent.value}

        for _ in range(args.rounds):
            for kind in MODES:
                mode.value = MODES.index(kind)
                time.sleep(0.3)  # let the other client's request in flight finish
                before = readings()
                for placement, values in neighbour_turns(args.window).items():
                    times[kind][placement] += values
                after = readings()
                for key in before:
                    cpu[kind][key] += after[key] - before[key]
        stop.set()
        while True:
            item = reports.get(timeout=120)
            if item == "done":
                break
            outcomes[item[0]] = item[1]
        other.join(30)
        report(args, times, cpu, outcomes, neighbours, workers)
    finally:
        server.stop()


def report(args, times, cpu, outcomes, neighbours, workers) -> None:
    label = {kind: kind.replace("at rate", f"at {args.rate:g}/s") for kind in MODES}
    print(f"isolation: a neighbour's RunSession while another client is quiet, busy, or sends its worst inputs "
          f"({args.rounds} x {args.window:g} s windows each); {len(workers)} worker(s)")
    if "other worker" not in neighbours and len(workers) > 1:
        print("  (no neighbour connection landed on another worker: only the same-worker reading)")
    for name, outcome in sorted(outcomes.items()):
        print(f"  {name:28s} {outcome}")
    placements = [*neighbours, "both"]
    p50 = {}
    for kind in MODES:
        for placement in placements:
            values = [v for p in neighbours for v in times[kind][p]] if placement == "both" else times[kind][placement]
            p50[kind, placement] = statistics.median(values)
            p90 = statistics.quantiles(values, n=10)[-1]
            print(f"  neighbour on {placement:12s} other client {label[kind]:17s} p50 {p50[kind, placement] * 1000:6.1f} ms  "
                  f"p90 {p90 * 1000:6.1f} ms  ({len(values)} turns)")
    print("  CPU seconds per second in each kind of window (the machine has "
          f"{os.cpu_count()} cores, shared with whatever else runs on it):")
    for kind, used in cpu.items():
        wall = used["wall"]
        print(f"    {label[kind]:17s} other client {used['other client'] / wall:4.2f}  emulator {used['emulator'] / wall:4.2f}  "
              f"neighbour {used['neighbour'] / wall:4.2f}  whole machine {used['machine'] / wall:4.2f}  "
              f"(other client sends {used['sent'] / wall:5.1f} requests/s)")
    print("  p50 ratios, neighbour on " + " / ".join(placements) + ":")
    for kind, against, why in [("ordinary", "quiet", "any client busy as fast as it can"),
                               ("worst", "quiet", "the goal: <= 1.5x"),
                               ("worst", "ordinary", "what the worst inputs cost beyond a busy client"),
                               ("ordinary at rate", "quiet", "secondary: a busy client at a fixed rate"),
                               ("worst at rate", "quiet", "secondary: the worst inputs at the same rate"),
                               ("worst at rate", "ordinary at rate", "secondary: the worst inputs beyond ordinary ones")]:
        ratios = " / ".join(f"{p50[kind, p] / p50[against, p]:.2f}x" for p in placements)
        print(f"    {label[kind] + ' vs ' + label[against]:38s} {ratios}   ({why})")


if __name__ == "__main__":
    main()
