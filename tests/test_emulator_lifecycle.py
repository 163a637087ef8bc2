"""Starting the emulator: readiness through gRPC health, one emulator per port and per store,
a checked store created private, and a chatty emulator that never blocks on its output."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from ces_nb import local_emulator
from ces_nb.errors import CesError
from conftest import APP, EmulatorProcess, texts, run
from emulator_process import free_port


def emulator_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`ces-nb emulator ...` that is expected to exit on its own."""
    return subprocess.run([sys.executable, "-m", "ces_nb", "emulator", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_health_tells_a_ready_emulator_from_nothing_and_from_another_program(emulator):
    assert local_emulator.health(emulator.address) == local_emulator.SERVING
    assert local_emulator.health(f"127.0.0.1:{free_port()}") == local_emulator.DOWN
    with socket.socket() as other:  # a program that is not a CES emulator
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        threading.Thread(target=lambda: [other.accept()[0].close() for _ in range(8)], daemon=True).start()
        assert local_emulator.health(address, timeout=2) == local_emulator.FOREIGN
        with pytest.raises(CesError, match="something other than a CES emulator listens"):
            local_emulator.ensure_emulator(address)
        check = subprocess.run([sys.executable, "-m", "ces_nb", "health", address], capture_output=True, text=True, timeout=60)
        assert check.returncode == 1 and "other than a CES emulator" in check.stderr
    ok = subprocess.run([sys.executable, "-m", "ces_nb", "health", emulator.address], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_a_second_emulator_on_the_same_port_fails_and_names_it(emulator):
    port = emulator.address.rsplit(":", 1)[1]
    second = emulator_command("--port", port, "--db", ":memory:")
    assert second.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in second.stderr and "--port 0" in second.stderr
    assert local_emulator.health(emulator.address) == local_emulator.SERVING  # the first one is untouched


def test_a_second_emulator_on_the_same_store_is_refused(tmp_path):
    db = tmp_path / "shared.db"
    # One worker each: the lock is the store's, whatever serves it (test_workers.py: with two).
    first = EmulatorProcess("--db", str(db), "--workers", "1")
    try:
        second = emulator_command("--port", "0", "--db", str(db))
        assert second.returncode == 1
        assert str(db) in second.stderr and f"pid {first.pid}" in second.stderr
        assert "--db :memory:" in second.stderr
    finally:
        first.stop()
    # Released on exit: the next emulator gets the file.
    again = EmulatorProcess("--db", str(db), "--workers", "1")
    again.stop()


def test_a_mistyped_flag_is_named_even_while_another_emulator_holds_the_store(tmp_path):
    """The flags are checked before the store is taken: the user hears about the flag they can fix
    now, not about a store they did not mean to share. With one worker and with several."""
    db = tmp_path / "held.db"
    first = EmulatorProcess("--db", str(db))
    try:
        for workers in ("1", "2"):
            bad = emulator_command("--port", "0", "--db", str(db), "--workers", workers, "--tool-memory-mb", "0")
            assert bad.returncode == 2, (workers, bad.stderr)
            assert "--tool-memory-mb must be positive, not 0" in bad.stderr, (workers, bad.stderr)
            assert "in use by another emulator" not in bad.stderr, (workers, bad.stderr)
    finally:
        first.stop()


def test_the_store_lock_goes_with_a_killed_emulator(tmp_path):
    db = tmp_path / "crash.db"
    first = EmulatorProcess("--db", str(db), "--workers", "1")  # a killed supervisor: test_workers.py
    first.kill()
    second = EmulatorProcess("--db", str(db), "--workers", "1")  # kill -9 released the lock
    second.stop()


def test_a_corrupt_store_stops_start_up_with_the_file_and_a_fix(tmp_path):
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not a database" * 200)
    done = emulator_command("--port", "0", "--db", str(db))
    assert done.returncode == 1
    assert f"the store {db} is damaged or not a SQLite database" in done.stderr
    assert f"mv {db} {db}.broken" in done.stderr


def test_a_store_in_a_folder_that_is_a_file_stops_start_up(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    done = emulator_command("--port", "0", "--db", str(blocker / "sessions.db"))
    assert done.returncode == 1
    assert "cannot create the folder" in done.stderr and "--db :memory:" in done.stderr


def test_an_unreachable_database_url_stops_start_up_without_its_password():
    port = free_port()
    done = emulator_command("--port", "0", "--db", f"postgresql+asyncpg://me:s3cret@127.0.0.1:{port}/ces", timeout=90)
    assert done.returncode == 1
    assert "can't be read" in done.stderr or "cannot" in done.stderr, done.stderr
    assert "s3cret" not in done.stderr


def test_the_store_and_its_folder_are_created_private(tmp_path):
    folder = tmp_path / "data" / "ces"
    db = folder / "sessions.db"
    process = EmulatorProcess("--db", str(db), "--workers", "1")
    try:
        channel = grpc.insecure_channel(process.address)
        sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        assert "welcome" in texts(run(sessions, f"{APP}/sessions/private-1", "Hello"))
        channel.close()
    finally:
        process.stop()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    with sqlite3.connect(db) as check:  # and it is the real store, holding the turn
        assert check.execute("select count(*) from sessions").fetchone()[0] >= 1


def test_a_chatty_emulator_never_blocks_on_its_output():
    # DEBUG logging writes far more than a pipe holds (64 KiB); nobody reads it while turns run.
    process = EmulatorProcess("--db", ":memory:", "--log-level", "DEBUG")
    try:
        channel = grpc.insecure_channel(process.address)
        sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        for n in range(40):
            assert "welcome" in texts(run(sessions, f"{APP}/sessions/chatty-{n}", "Hello"))
        channel.close()
        assert len(process.output()) > 65536
    finally:
        process.stop()


def test_warm_up_never_runs_tool_code(tmp_path):
    """Tool code may have side effects; the start-up warm-up plays the examples without it.
    The same tool does run when a client's turn calls it."""
    import shutil
    import tempfile

    from ces_nb.emulator.server import demo_app_path

    export = tmp_path / "skyway"
    shutil.copytree(demo_app_path(), export)
    marks = tempfile.mkdtemp(prefix="ces-nb-side-effects-")
    os.chmod(marks, 0o777)  # tool workers may run as an unprivileged user
    code = export / "tools/get_flight_status/python_function/python_code.py"
    code.write_text(code.read_text().replace(
        '    number = flight_number.strip().upper()\n',
        f'    open({marks!r} + "/called-" + flight_number, "w").close()  # a side effect\n'
        '    number = flight_number.strip().upper()\n'))
    process = EmulatorProcess("--app", str(export), "--db", ":memory:")
    try:
        assert os.listdir(marks) == []  # serving, and the example's call to the tool never ran
        assert _tool_workers_of(process.pid)  # though a worker is up already, for the first call
        channel = grpc.insecure_channel(process.address)
        sessions = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        assert "Flight SW12" in texts(run(sessions, f"{APP}/sessions/side-effect", "What's the status of flight SW12?"))
        channel.close()
        assert os.listdir(marks) == ["called-SW12"]
    finally:
        process.stop()
        shutil.rmtree(marks, ignore_errors=True)


def test_warm_up_keeps_to_its_budget():
    import asyncio

    from ces_nb.emulator.server import EmulatorServer

    async def played(**budget) -> int:
        server = EmulatorServer(port=0, db=":memory:")
        await server.start()
        try:
            return await server.warm_up(**budget)
        finally:
            await server.stop(0)

    assert asyncio.run(played()) >= 8  # the demo's examples
    assert asyncio.run(played(budget_s=0)) == 0


def _tool_workers_of(pid: int) -> list[int]:
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"python_worker" in cmdline:
            workers.append(int(stat.parent.name))
    return workers
