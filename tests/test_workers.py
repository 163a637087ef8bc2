"""`ces-nb emulator --workers N`: one emulator, N processes on one port and one store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from ces_nb import local_emulator
from conftest import APP, run, texts
from emulator_process import EmulatorProcess
from test_async_and_bidi import Bidi
from worker_connections import connected_workers

TALK = ["Hello", "What's the status of flight SW12?", "How many bags can I check?", "What is my loyalty tier?"]


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    db = tmp_path_factory.mktemp("workers") / "sessions.db"
    process = EmulatorProcess("--db", str(db), "--workers", "2", rest_port=0)
    yield process, db
    process.stop()


def _client(address):
    # its own connection: channels in one process to one address otherwise share one, on one worker
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))


def test_two_workers_serve_one_port_and_health_says_so(two_workers):
    emulator, _ = two_workers
    assert len(children(emulator.pid)) == 2
    assert local_emulator.health(emulator.address) == local_emulator.SERVING
    assert "(2 workers " in emulator.output()
    # the supervisor logs the app's load report; its workers load the same app without repeating it
    assert emulator.output().count("app skyway load report") == 1, emulator.output()


def listening_line(emulator) -> str:
    """The supervisor's "listening" line, which it prints just after its workers say SERVING."""
    for _ in range(100):
        line = next((line for line in emulator.output().splitlines() if "listening on" in line), None)
        if line:
            return line
        time.sleep(0.1)
    raise AssertionError(f"no listening line in {emulator.output()!r}")


def test_each_worker_has_a_core_of_its_own_unless_told_not_to(two_workers, tmp_path):
    """Left to the scheduler, a woken worker often landed on the core a busy sibling held."""
    emulator, _ = two_workers
    cores = sorted(os.sched_getaffinity(0))
    pinned = [os.sched_getaffinity(pid) for pid in children(emulator.pid)]
    if len(cores) >= 2:
        assert pinned == [{cores[0]}, {cores[1]}]
        assert f"(2 workers on cores {cores[0]}, {cores[1]};" in listening_line(emulator)
    else:  # more workers than cores: each may run anywhere
        assert pinned == [set(cores)] * 2 and "(2 workers on any core;" in listening_line(emulator)
    # their tool workers (one started ahead of the first call) share their worker's core
    tool_workers = {worker: children(worker) for worker in children(emulator.pid)}
    assert all(tool_workers.values())
    assert all(os.sched_getaffinity(p) == os.sched_getaffinity(w) for w, ps in tool_workers.items() for p in ps)
    free = EmulatorProcess("--db", str(tmp_path / "free.db"), "--workers", "2", "--pin-workers", "off")
    try:
        assert [os.sched_getaffinity(pid) for pid in children(free.pid)] == [set(cores)] * 2
        assert "(2 workers on any core;" in listening_line(free)
    finally:
        free.stop()


def test_a_session_moves_between_connections_and_workers_without_losing_a_turn(two_workers):
    """Each connection goes to one worker, which the kernel picks: a session talked to over
    connections on both workers in turn sees every earlier turn, whichever worker answers."""
    emulator, _ = two_workers
    workers = children(emulator.pid)
    name = f"{APP}/sessions/roaming"
    clients, reached = [], set()
    try:
        # new connections until the kernel has placed some on each worker (it hashes them)
        while len(clients) < 4 or (reached != set(workers) and len(clients) < 40):
            channel, sessions = _client(emulator.address)
            grpc.channel_ready_future(channel).result(timeout=10)
            clients.append((channel, sessions))
            reached = set(connected_workers(os.getpid(), workers).values())
        assert reached == set(workers), f"40 connections all reached {reached} of {workers}"
        count = max(16, len(clients))  # every connection, so both workers, takes turns
        for n in range(count):
            _channel, sessions = clients[n % len(clients)]
            out = run(sessions, name, TALK[n % len(TALK)])
            assert out[-1].turn_index == n + 1  # no turn lost or counted twice
        channel = grpc.insecure_channel(emulator.address)
        agents = ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))
        turns = agents.get_conversation(name=name.replace("/sessions/", "/conversations/")).turns
        assert len(turns) == count
        assert [t.messages[0].chunks[0].text for t in turns] == [TALK[n % len(TALK)] for n in range(count)]
        channel.close()
    finally:
        for channel, _ in clients:
            channel.close()


def test_bidi_and_rest_work_through_the_workers(two_workers):
    emulator, _ = two_workers
    channel, sessions = _client(emulator.address)
    with Bidi(sessions) as bidi:
        bidi.send(config=ces_v1.SessionConfig(session=f"{APP}/sessions/bidi-workers"))
        for n, text in enumerate(TALK[:3]):
            bidi.send(realtime_input=ces_v1.SessionInput(text=text))
            assert bidi.turn()[-1].session_output.turn_index == n + 1
        bidi.close()
    channel.close()
    request = urllib.request.Request(
        f"{emulator.rest_url}/v1/{APP}/sessions/rest-workers:runSession",
        data=json.dumps({"config": {"session": f"{APP}/sessions/rest-workers"}, "inputs": [{"text": "Hello"}]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = json.load(reply)
    assert "welcome to SkyWay Air" in " ".join(o.get("text", "") for o in body["outputs"])


def test_another_emulator_on_the_same_port_or_store_is_refused(two_workers, tmp_path):
    emulator, db = two_workers
    port = emulator.address.rsplit(":", 1)[1]
    for args in (["--db", ":memory:"], ["--db", str(tmp_path / "other.db"), "--workers", "2"]):
        second = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", port, *args],
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == 1, second.stderr
        assert f"port {port} on 127.0.0.1 is taken" in second.stderr and "--port 0" in second.stderr
    same_store = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", str(db), "--workers", "2"],
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert same_store.returncode == 1 and str(db) in same_store.stderr and f"pid {emulator.pid}" in same_store.stderr
    assert local_emulator.health(emulator.address) == local_emulator.SERVING  # untouched


def test_memory_store_takes_one_worker():
    out = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", ":memory:", "--workers", "2"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert ":memory: lives in one process" in out.stderr and "--workers 1" in out.stderr


def test_an_app_that_cannot_load_stops_the_workers_with_one_message(tmp_path):
    """The supervisor checks the apps while its workers start; a broken one exits 2, said once."""
    app = tmp_path / "broken"
    app.mkdir()
    (app / "app.yaml").write_text("displayName: [\n")
    out = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--app", str(app),
                          "--db", str(tmp_path / "s.db"), "--workers", "2"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("cannot load app: app.yaml: not valid YAML") == 1, out.stderr
    assert "listening" not in out.stdout


def test_tls_serves_from_one_process(tmp_path):
    """--tls's front pipes to one process's ports: more workers are refused with what to type."""
    out = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", "--db", str(tmp_path / "s.db"),
                          "--tls", "--workers", "2"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "--tls serves from one process" in out.stderr and "--workers 1" in out.stderr


def test_workers_die_with_a_killed_supervisor_and_free_the_store(tmp_path):
    db = tmp_path / "killed.db"
    first = EmulatorProcess("--db", str(db), "--workers", "2")
    workers = children(first.pid)
    assert len(workers) == 2
    channel, sessions = _client(first.address)
    run(sessions, f"{APP}/sessions/before-kill", "Hello")
    channel.close()
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), "workers outlived the supervisor"
    second = EmulatorProcess("--db", str(db), "--workers", "2")  # the store and the port are free again
    try:
        channel, sessions = _client(second.address)
        out = run(sessions, f"{APP}/sessions/before-kill", "What is my loyalty tier?")
        assert out[-1].turn_index == 2  # the acknowledged turn survived kill -9
        channel.close()
    finally:
        assert second.stop() == 0
