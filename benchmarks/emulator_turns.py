"""Emulator overhead: a scripted 10-turn text conversation, repeated,
(1) through the official client over gRPC to the emulator, vs
(2) the same app in-process through ADK Runner.run_async, with ADK's defaults:
    (2a) with no OpenTelemetry SDK installed, so ADK's spans are no-ops;
    (2b) with an SDK tracer provider, as `adk web` runs it. The emulator has to
         trace, because its root_span is built from ADK's spans.
(2c) the Runner with the emulator's own RunConfig (stable GenAI semconv, see
     ces_nb/emulator/runtime.py) and the emulator's garbage-collector settings
     (gc.freeze() after warming, threshold 10 000): like with like, so (1)/(2c) is
     the cost of the emulator and the RPC alone. That ratio is the goal line; (2a)
     and (2b) are for information.

Both sides keep sessions in memory (the emulator on --db :memory:, the Runner on
InMemorySessionService): the store is not what is compared here (benchmarks/load.py
compares stores).

Every side runs in its own process, and the rounds are interleaved (one round
of each, then again), so all of them see the same machine. Turn 1 includes
creating the session on both sides: RunSession creates it on first use.
Prints p50/p99 per turn and the ratios, all measured in one run.

    python benchmarks/emulator_turns.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

SCRIPT = [
    "Hello",
    "What's the status of flight SW12?",
    "How many bags can I check?",
    "Can I bring my cat on the plane?",
    "What is my loyalty tier?",
    "Are there any travel advisories for Denver?",
    "Can you send me my boarding pass?",
    "What's the status of flight SW34?",
    "How many bags can I check?",
    "That's all, thanks. Goodbye!",
]

BASELINES = {
    "untraced": "(2a) ADK Runner, no tracing",
    "traced": "(2b) ADK Runner, OTel SDK tracing",
    "emulator-config": "(2c) ADK Runner, emulator's RunConfig+gc",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- (2): a worker process that runs one ADK round per line on stdin --------------------------

def adk_worker(kind: str) -> None:
    from google.adk.agents import RunConfig
    from google.adk.sessions import InMemorySessionService
    from google.genai import types

    from ces_nb.emulator.export import load_export
    from ces_nb.emulator.python_runner import PythonToolRunner
    from ces_nb.emulator.runtime import TELEMETRY, USER_ID, AppRuntime
    from ces_nb.emulator.server import demo_app_path
    from ces_nb.emulator.tracing import turn_router

    if kind != "untraced":
        turn_router()  # installs an SDK TracerProvider, as `adk web` runs ADK
    run_config = RunConfig(telemetry=TELEMETRY) if kind == "emulator-config" else RunConfig()
    runtime = AppRuntime(load_export(str(demo_app_path())), InMemorySessionService(), PythonToolRunner())
    if kind == "emulator-config":  # as `ces-nb emulator` does after its warm-up (cli.py)
        import gc

        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)

    async def one_round() -> list[float]:
        t0 = time.perf_counter()
        session = await runtime.session_service.create_session(app_name=runtime.app.app_id, user_id=USER_ID)
        times = []
        for i, text in enumerate(SCRIPT):
            if i:
                t0 = time.perf_counter()
            message = types.Content(role="user", parts=[types.Part(text=text)])
            async for _event in runtime.runner.run_async(
                user_id=USER_ID, session_id=session.id, new_message=message, run_config=run_config
            ):
                pass
            times.append(time.perf_counter() - t0)
        return times

    loop = asyncio.new_event_loop()
    print("ready", flush=True)
    for _line in sys.stdin:
        print(json.dumps(loop.run_until_complete(one_round())), flush=True)
    loop.run_until_complete(runtime.python_runner.close())


class Worker:
    def __init__(self, kind: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--adk-worker", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {kind} worker did not start")

    def round(self) -> list[float]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# -- (1): the official client against the emulator -------------------------------------------

def grpc_round(client) -> list[float]:
    name = f"projects/b/locations/us/apps/skyway/sessions/bench-{uuid.uuid4().hex[:12]}"
    times = []
    for text in SCRIPT:
        t0 = time.perf_counter()
        client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})
        times.append(time.perf_counter() - t0)
    return times


def measure(rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    import grpc
    from google.cloud import ces_v1
    from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from emulator_process import EmulatorProcess

    server = EmulatorProcess("--db", ":memory:")
    workers = {kind: Worker(kind) for kind in BASELINES}
    channel = grpc.insecure_channel(server.address)
    client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    over_grpc: list[float] = []
    baselines: dict[str, list[float]] = {kind: [] for kind in BASELINES}
    try:
        for r in range(rounds + 1):
            g = grpc_round(client)
            b = {kind: worker.round() for kind, worker in workers.items()}
            if r:  # round 0 warms up
                over_grpc += g
                for kind, times in b.items():
                    baselines[kind] += times
    finally:
        channel.close()
        for worker in workers.values():
            worker.close()
        server.stop()
    return over_grpc, baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--adk-worker", choices=sorted(BASELINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.adk_worker:
        adk_worker(args.adk_worker)
        return
    grpc_times, baselines = measure(args.rounds)
    print("store: memory (:memory:) on both sides: the Runner baseline keeps sessions in memory, so like is compared with like")
    print(f"{len(SCRIPT)}-turn conversation x {args.rounds} rounds ({len(grpc_times)} turns each way), interleaved")
    print(f"{'':40}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    rows = [("(1) official client + gRPC", grpc_times)] + [(BASELINES[k], v) for k, v in baselines.items()]
    for label, values in rows:
        print(f"{label:40}{percentile(values, 50) * 1e3:10.2f}{percentile(values, 99) * 1e3:10.2f}"
              f"{statistics.mean(values) * 1e3:10.2f}")
    for kind, base in baselines.items():
        goal = "  (goal <= 1.3x: like with like)" if kind == "emulator-config" else "  (information)"
        print(f"ratio (1)/{BASELINES[kind][:4]}: p50 {percentile(grpc_times, 50) / percentile(base, 50):.2f}x, "
              f"p99 {percentile(grpc_times, 99) / percentile(base, 99):.2f}x, "
              f"mean {statistics.mean(grpc_times) / statistics.mean(base):.2f}x{goal}")


if __name__ == "__main__":
    main()
