"""Randomized chaos: 50 sessions (text, streaming, bidi, client tool calls) from three threads
while the emulator is kill -9'd and restarted on the same file store and port, aimed at
unary turns, streams, bidi turns, tool-call waits and tool answers. Afterwards every turn a
client saw complete is stored exactly once, at its index, with its spans, and nothing the
emulators started is left running.

CI runs one fixed seed. `make chaos` runs random ones and prints each; CHAOS_SEED=N (or
`make chaos SEED=N`) replays one, CHAOS_SEED=random picks one here.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid

import pytest

import chaos

FIXED_SEED = 20261201


def chaos_seed() -> int:
    value = os.environ.get("CHAOS_SEED", "").strip()
    if value.lower() == "random":
        return random.SystemRandom().randrange(2**31)
    return int(value) if value else FIXED_SEED


def fixed_port() -> int:
    """A free port below the kernel's ephemeral range: no other program's `--port 0` or
    outgoing connection can be handed it while our emulator is down between restarts."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def test_plan_is_the_seeds_and_covers_every_kind_of_turn():
    first, again, other = chaos.plan(FIXED_SEED), chaos.plan(FIXED_SEED), chaos.plan(FIXED_SEED + 1)
    assert first == again and first != other
    assert len(first) == 50
    ops = [op for script in first for op in script.ops]
    assert {(op.kind, op.via) for op in ops} >= {
        ("say", "send"), ("say", "stream"), ("bidi", "bidi"), ("book", "send"), ("book", "stream"),
        ("answer", "send"), ("answer", "stream"), ("pay", "send"), ("goodbye", "send"), ("goodbye", "bidi"), ("probe", "send"),
    }


def test_leftovers_finds_a_process_of_the_run_by_parent_lineage_or_marker(monkeypatch):
    """The orphan scan itself can fail: each way of knowing a process finds it, until it is gone."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv(chaos.MARKER_ENV, marker)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lineage = {(pid, start) for pid, start in chaos.descendants([os.getpid()]) if pid == sleeper.pid}
        assert lineage  # (pid, start time): the sleeper, and nothing else this test runs beside it

        def found(*args) -> bool:
            return any(f"pid {sleeper.pid} " in line for line in chaos.leftovers(*args))

        assert found(marker, [])                    # its environment
        assert found("another-run", [os.getpid()])  # its parent
        assert found("another-run", [], lineage)    # seen descending from one
        assert not found("another-run", [])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert chaos.leftovers(marker, [], lineage) == []


@pytest.mark.timeout(300)  # about 90 s on 2 cores beside another xdist worker
def test_kill_and_restart_loses_no_completed_turn_and_leaves_no_process(tmp_path, monkeypatch):
    seed = chaos_seed()
    marker = uuid.uuid4().hex
    monkeypatch.setenv(chaos.MARKER_ENV, marker)  # inherited by every emulator and its workers
    report = chaos.run(seed, str(tmp_path / "chaos.db"), fixed_port(), marker)
    summary = report.summary()
    print(summary)
    assert not report.problems, summary
    assert not report.orphans, summary
    assert len(report.faults) == 6 and all(f.restart_s > 0 for f in report.faults), summary
