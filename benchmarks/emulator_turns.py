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


def over_grpc(rounds: int) -> list[float]:
    proc = subprocess.Popen([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", ":memory:"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = ""
    while not address:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("emulator did not start")
        if "listening on" in line:
            address = line.split("listening on ", 1)[1].split()[0]
    channel = grpc.insecure_channel(address)
    client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    times = []
    try:
        for r in range(rounds + 1):
            name = f"projects/b/locations/us/apps/skyway/sessions/bench-{uuid.uuid4().hex[:12]}"
            for text in SCRIPT:
                t0 = time.perf_counter()
                client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]})
                if r:  # round 0 warms up
                    times.append(time.perf_counter() - t0)
    finally:
        channel.close()
        proc.terminate()
        proc.wait()
    return times


def in_process(rounds: int, traced: bool) -> list[float]:
    if traced:
        turn_router()  # installs an SDK TracerProvider, once per process

    async def main() -> list[float]:
        service = InMemorySessionService()
        runtime = AppRuntime(load_export(str(demo_app_path())), service, PythonToolRunner())
        times = []
        for r in range(rounds + 1):
            session = await service.create_session(app_name=runtime.app.app_id, user_id=USER_ID)
            for text in SCRIPT:
                t0 = time.perf_counter()
                async for _event in runtime.runner.run_async(
                    user_id=USER_ID, session_id=session.id, new_message=types.Content(role="user", parts=[types.Part(text=text)])
                ):
                    pass
                if r:
                    times.append(time.perf_counter() - t0)
        await runtime.python_runner.close()
        return times

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    grpc_times = over_grpc(args.rounds)
    untraced = in_process(args.rounds, traced=False)
    traced = in_process(args.rounds, traced=True)
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
