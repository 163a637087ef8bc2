"""`ces-nb emulator --db postgresql://…`: the same conversations on a real PostgreSQL
(tests/postgres_server.py), shared by several emulators and by `--workers`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from google.adk.errors import StaleSessionError
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from conftest import APP, run, texts
from emulator_process import EmulatorProcess, free_port
from postgres_server import postgres_server, postgres_url  # noqa: F401 (fixtures)
from test_file_store import _event

# The same conversation tests as on the default store, on this module's PostgreSQL emulator
from test_agent_and_tool_services import (  # noqa: F401
    test_conversations_are_paged, test_conversations_list_get_delete)
from test_session_service import (  # noqa: F401
    test_client_tool_round_trip_uses_the_value_sent, test_python_tool_runs_with_the_users_value_and_spans_are_real,
    test_text_turn_has_index_completion_and_diagnostics, test_what_the_user_picks_flows_into_later_args_and_payloads)

TALK = ["Hello", "What's the status of flight SW12?", "How many bags can I check?", "What is my loyalty tier?"]


@pytest.fixture(scope="module")
def pg_database(postgres_server):  # noqa: F811
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def emulator(pg_database):
    process = EmulatorProcess("--db", pg_database, "--workers", "1")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(emulator):
    ch = grpc.insecure_channel(emulator.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def sessions(channel):
    return ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))


@pytest.fixture(scope="module")
def agents(channel):
    return ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))


def _clients(address):
    channel = grpc.insecure_channel(address)
    return (channel, ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
            ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel)))


def test_the_emulator_says_it_serves_from_postgresql_without_a_password(emulator, pg_database):
    assert f"db: {pg_database}" in emulator.output()


def test_conversations_survive_a_restart_on_postgresql(postgres_url):  # noqa: F811
    name = f"{APP}/sessions/restart-me"
    first = EmulatorProcess("--db", postgres_url, "--workers", "1")
    try:
        channel, sessions, _ = _clients(first.address)
        run(sessions, name, "Hello")
        channel.close()
    finally:
        first.stop()
    second = EmulatorProcess("--db", postgres_url, "--workers", "1")
    try:
        channel, sessions, agents = _clients(second.address)
        listed = [c.name for c in agents.list_conversations(parent=APP)]
        assert listed == [f"{APP}/conversations/restart-me"]
        assert "welcome" in agents.get_conversation(name=listed[0]).turns[0].messages[1].chunks[0].text
        assert run(sessions, name, "What is my loyalty tier?")[0].turn_index == 2
        channel.close()
    finally:
        second.stop()


def test_two_emulators_on_one_database_share_sessions_turn_by_turn(postgres_url):  # noqa: F811
    """Two emulators (two machines, say, behind one address): a session talked to on each in
    turn sees every earlier turn, and each lists the other's conversations."""
    one = EmulatorProcess("--db", postgres_url, "--workers", "1")
    two = EmulatorProcess("--db", postgres_url, "--workers", "1")
    clients = [_clients(one.address), _clients(two.address)]
    try:
        name = f"{APP}/sessions/shared"
        for n in range(8):
            _channel, sessions, _agents = clients[n % 2]
            out = run(sessions, name, TALK[n % len(TALK)])
            assert out[-1].turn_index == n + 1  # no turn lost or counted twice, whichever emulator answers
        run(clients[1][1], f"{APP}/sessions/only-on-two", "Hello")
        listed = {c.name for c in clients[0][2].list_conversations(parent=APP)}
        assert listed == {f"{APP}/conversations/shared", f"{APP}/conversations/only-on-two"}
        turns = clients[0][2].get_conversation(name=f"{APP}/conversations/shared").turns
        assert [t.messages[0].chunks[0].text for t in turns] == [TALK[n % len(TALK)] for n in range(8)]
        # One address for both: gRPC's client-side round robin, each call to the next emulator
        both = grpc.insecure_channel(f"ipv4:{one.address},{two.address}", options=[("grpc.lb_policy_name", "round_robin")])
        balanced = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=both))
        for n in range(6):
            assert run(balanced, f"{APP}/sessions/balanced", TALK[n % len(TALK)])[-1].turn_index == n + 1
        both.close()
        assert len(clients[1][2].get_conversation(name=f"{APP}/conversations/balanced").turns) == 6
    finally:
        for channel, _, _ in clients:
            channel.close()
        one.stop()
        two.stop()


def test_two_workers_on_postgresql(postgres_url):  # noqa: F811
    emulator = EmulatorProcess("--db", postgres_url, "--workers", "2")
    clients = [_clients(emulator.address) for _ in range(6)]
    try:
        for _ in range(100):  # the supervisor prints its line just after the workers say SERVING
            if "(2 workers " in emulator.output():
                break
            time.sleep(0.1)
        assert "(2 workers " in emulator.output()
        name = f"{APP}/sessions/roaming"
        for n in range(12):
            out = run(clients[n % len(clients)][1], name, TALK[n % len(TALK)])
            assert out[-1].turn_index == n + 1
        assert len(clients[0][2].get_conversation(name=name.replace("/sessions/", "/conversations/")).turns) == 12
    finally:
        for channel, _, _ in clients:
            channel.close()
        emulator.stop()


def test_a_stale_session_is_refused_on_postgresql(postgres_url):  # noqa: F811
    """Two copies of one session (two emulators): the first turn stored wins; the other gets
    ADK's StaleSessionError (which the emulator retries on the stored session) and stores nothing."""
    from ces_nb.emulator.store import open_store

    async def go():
        store = await open_store(postgres_url)
        await store.create_session(app_name="a", user_id="u", session_id="s")
        one = await store.get_session(app_name="a", user_id="u", session_id="s")
        two = await store.get_session(app_name="a", user_id="u", session_id="s")
        await store.append_events(one, [_event("first", 1), _event("again", 2)])
        assert await store.revision(two) != two._storage_update_marker
        with pytest.raises(StaleSessionError):
            await store.append_events(two, [_event("late", 3)])
        await store.append_events(one, [_event("more", 4)])
        assert await store.revision(one) == one._storage_update_marker
        stored = await store.get_session(app_name="a", user_id="u", session_id="s")
        await store.close()
        return stored

    stored = asyncio.run(go())
    assert [e.content.parts[0].text for e in stored.events] == ["first", "again", "more"]
    assert stored.state["n"] == 4


def test_the_evaluation_services_resources_live_in_postgresql(postgres_url):  # noqa: F811
    """Its table is in the shared database: one emulator's runs are another's."""
    from test_evaluation_service import ACME, client, create, golden
    from test_evaluation_service import run as run_evaluation

    first = EmulatorProcess("--app", str(ACME), "--db", postgres_url, "--workers", "1")
    second = EmulatorProcess("--app", str(ACME), "--db", postgres_url, "--workers", "1")
    try:
        made = create(client(first, "grpc"), golden("kept"))
        finished = run_evaluation(client(first, "grpc"), made.name)
        elsewhere = client(second, "grpc")
        assert [e.name for e in elsewhere.list_evaluations(parent=made.name.rsplit("/evaluations/", 1)[0])] == [made.name]
        assert list(elsewhere.get_evaluation_run(name=finished.name).evaluation_results) == list(finished.evaluation_results)
    finally:
        first.stop()
        second.stop()
    import psycopg

    with psycopg.connect(postgres_url) as connection:
        kinds = {row[0] for row in connection.execute("SELECT kind FROM ces_nb_evaluation_resources")}
    assert {"evaluation", "run", "result"} <= kinds


def _emulator_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--port", "0", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_an_unreachable_postgresql_stops_start_up_naming_it_without_its_password():
    port = free_port()
    url = f"postgresql://me:s3cret@127.0.0.1:{port}/ces"
    done = _emulator_command("--db", url, "--workers", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"postgresql://me:***@127.0.0.1:{port}/ces" in done.stderr
    assert f"pg_isready -h 127.0.0.1 -p {port}" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout and "listening" not in done.stdout


def test_a_missing_database_stops_start_up_and_says_createdb(postgres_server):  # noqa: F811
    url = postgres_server.url("no_such_db")
    done = _emulator_command("--db", url, "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the store {url} can't be read" in done.stderr and f"createdb -h 127.0.0.1 -p {postgres_server.port} no_such_db" in done.stderr
    assert "listening" not in done.stdout
    # the supervisor checks the database before any worker starts: one message, not one per worker
    assert done.stderr.count("can't be read") == 1, done.stderr
