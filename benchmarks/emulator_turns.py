"""Emulator overhead: a scripted 10-turn text conversation, repeated,
(1) through the official client over gRPC to the emulator, vs
(2) the same app in-process through ADK Runner.run_async, twice: with no
    OpenTelemetry SDK installed (ADK's spans are no-ops), and with an SDK tracer
    provider, as `adk web` runs it. The emulator must trace: its root_span is
    built from those spans, so (2b) is the like-for-like baseline.
Prints p50/p99 per turn and the ratios, all measured in one run.

    python benchmarks/emulator_turns.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid

import grpc
from google.adk.sessions import InMemorySessionService
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.genai import types

from ces_nb.emulator.export import load_export
from ces_nb.emulator.python_runner import PythonToolRunner
from ces_nb.emulator.runtime import USER_ID, AppRuntime
from ces_nb.emulator.server import demo_app_path
from ces_nb.emulator.tracing import turn_router

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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_emulator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", ":memory:"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("emulator did not start")
        if "listening on" in line:
            return proc, line.split("listening on ", 1)[1].split()[0]


def grpc_round(client) -> list[float]:
    name = f"projects/b/locations/us/apps/skyway/sessions/bench-{uuid.uuid4().hex[:12]}"
    times = []
    for text in SCRIPT:
        t0 = time.perf_counter()
        client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})
        times.append(time.perf_counter() - t0)
    return times


async def adk_round(runtime) -> list[float]:
    session = await runtime.session_service.create_session(app_name=runtime.app.app_id, user_id=USER_ID)
    times = []
    for text in SCRIPT:
        t0 = time.perf_counter()
        async for _event in runtime.runner.run_async(
            user_id=USER_ID, session_id=session.id, new_message=types.Content(role="user", parts=[types.Part(text=text)])
        ):
            pass
        times.append(time.perf_counter() - t0)
    return times


def measure(rounds: int) -> tuple[list[float], list[float], list[float]]:
    """(2a) untraced first (no SDK provider yet); then (1) and (2b) round by round, interleaved,
    so both see the same machine."""
    loop = asyncio.new_event_loop()
    runtime = AppRuntime(load_export(str(demo_app_path())), InMemorySessionService(), PythonToolRunner())
    untraced: list[float] = []
    for r in range(rounds + 1):
        times = loop.run_until_complete(adk_round(runtime))
        if r:
            untraced += times
    turn_router()  # installs an SDK TracerProvider, as `adk web` runs ADK
    proc, address = start_emulator()
    channel = grpc.insecure_channel(address)
    client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    over_grpc, traced = [], []
    try:
        for r in range(rounds + 1):
            g = grpc_round(client)
            a = loop.run_until_complete(adk_round(runtime))
            if r:  # round 0 warms up
                over_grpc += g
                traced += a
    finally:
        channel.close()
        proc.terminate()
        proc.wait()
        loop.run_until_complete(runtime.python_runner.close())
        loop.close()
    return over_grpc, untraced, traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    grpc_times, untraced, traced = measure(args.rounds)
    print(f"{len(SCRIPT)}-turn conversation x {args.rounds} rounds ({len(grpc_times)} turns each way)")
    print(f"{'':36}{'p50 ms':>10}{'p99 ms':>10}")
    rows = (("(1) official client + gRPC", grpc_times), ("(2a) ADK Runner, no tracing", untraced),
            ("(2b) ADK Runner, OTel SDK tracing", traced))
    for label, values in rows:
        print(f"{label:36}{percentile(values, 50) * 1e3:10.2f}{percentile(values, 99) * 1e3:10.2f}")
    for label, base in (("(1)/(2b)", traced), ("(1)/(2a)", untraced)):
        print(f"ratio {label}: p50 {percentile(grpc_times, 50) / percentile(base, 50):.2f}x, "
              f"p99 {percentile(grpc_times, 99) / percentile(base, 99):.2f}x, "
              f"mean {statistics.mean(grpc_times) / statistics.mean(base):.2f}x  (goal <= 1.3x)")

if __name__ == "__main__":
    main()
