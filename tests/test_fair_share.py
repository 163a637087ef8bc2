"""Fair shares of a worker's event loop between clients (ces_nb.emulator.fair_share).

The scheduling itself is checked on FairShare with a clock the test moves, in order of events
rather than time; then, over a real socket, that a client sending turns back to back and a
neighbour on another connection both have every turn answered, in order, on every path.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import grpc
import pytest
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport

from ces_nb.emulator import fair_share
from ces_nb.emulator.fair_share import FairShare, checkpoint
from conftest import APP, run, texts


class Clock:
    """Time that moves only when the test moves it (`now += s`), or, `running`, also as real time does."""

    def __init__(self, running: bool = False):
        self.now = 100.0
        self.running = running

    def __call__(self) -> float:
        return self.now + (time.monotonic() if self.running else 0.0)


async def _settle():
    for _ in range(20):
        await asyncio.sleep(0)


def _with_history(share: FairShare, clock: Clock, client: str, seconds: float):
    """`client` had a request in flight for `seconds`, which just ended."""
    async def past():
        async with share.request(client):
            clock.now += seconds
    return past()


def scenario(busy_seconds: float, *, same_client: bool = False, crowd: int = 0):
    """A light request is running when a request of `busy` (with `busy_seconds` of history)
    reaches a checkpoint; the light one ends only when told. The order things happened in."""
    async def main():
        clock = Clock()
        share = FairShare(clock=clock)
        busy = "light" if same_client else "busy"
        await _with_history(share, clock, busy, busy_seconds)
        order: list[str] = []
        light_running, light_may_end, stop_crowd = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def light():
            async with share.request("light"):
                light_running.set()
                await light_may_end.wait()
                order.append("light ended")

        async def heavy():
            async with share.request(busy):
                await light_running.wait()
                await checkpoint()
                order.append("busy past its checkpoint")

        async def other(n):
            async with share.request(f"crowd-{n}"):
                await stop_crowd.wait()

        crowd_tasks = [asyncio.create_task(other(n)) for n in range(crowd)]
        tasks = [asyncio.create_task(light()), asyncio.create_task(heavy())]
        await _settle()
        order.append("light may end")
        light_may_end.set()
        await asyncio.gather(*tasks)
        stop_crowd.set()
        await asyncio.gather(*crowd_tasks)
        return order

    return asyncio.run(main())


def test_a_busy_client_waits_at_a_checkpoint_while_a_lighter_clients_request_runs():
    assert scenario(busy_seconds=1.0) == ["light may end", "light ended", "busy past its checkpoint"]


def test_clients_as_busy_as_each_other_do_not_wait():
    # the light client's running request counts toward its demand too: both have ~0 s
    assert scenario(busy_seconds=0.0) == ["busy past its checkpoint", "light may end", "light ended"]


def test_requests_of_one_client_never_wait_for_each_other():
    assert scenario(busy_seconds=1.0, same_client=True) == ["busy past its checkpoint", "light may end", "light ended"]


def test_with_more_clients_running_than_it_compares_nobody_waits():
    order = scenario(busy_seconds=1.0, crowd=fair_share.MAX_CLIENTS)
    assert order == ["busy past its checkpoint", "light may end", "light ended"]


def test_a_request_waits_at_most_its_budget_in_all(monkeypatch):
    """The light request never ends by itself: the busy one goes on once its budget is spent."""
    monkeypatch.setattr(fair_share, "MAX_PARK_S", 0.05)

    async def main():
        clock = Clock(running=True)  # the budget is spent in time that passes
        share = FairShare(clock=clock)
        await _with_history(share, clock, "busy", 1.0)
        passed, light_may_end = [], asyncio.Event()

        async def light():
            async with share.request("light"):
                await light_may_end.wait()

        async def heavy():
            async with share.request("busy"):
                for n in range(3):
                    await checkpoint()
                    passed.append(n)
                light_may_end.set()

        await asyncio.wait_for(asyncio.gather(light(), heavy()), 30)
        return passed

    assert asyncio.run(main()) == [0, 1, 2]


async def _busy_next_to_light():
    """A share where "busy" has a second of history, and a task holding a light request open
    until `release` is set: (share, release, that task)."""
    clock = Clock()
    share = FairShare(clock=clock)
    await _with_history(share, clock, "busy", 1.0)
    release = asyncio.Event()

    async def light():
        async with share.request("light"):
            await release.wait()

    task = asyncio.create_task(light())
    await _settle()
    return share, release, task


async def _light_ends(share: FairShare, release: asyncio.Event, light: asyncio.Task) -> None:
    """Let the light request end; then nothing may be left running or in flight."""
    release.set()
    await light
    assert _idle(share)


def _idle(share: FairShare) -> bool:
    return not share._running and not share._in_flight


def test_two_waiting_requests_do_not_wake_each_other_in_a_loop(monkeypatch):
    """Each wait ends when a request stops running; waiters looking again must not count as one."""
    async def main():
        share, release, light = await _busy_next_to_light()
        looks = []
        lighter = share._lighter_running
        monkeypatch.setattr(share, "_lighter_running", lambda client: looks.append(client) or lighter(client))

        async def heavy():
            async with share.request("busy"):
                await checkpoint()

        waiting = [asyncio.create_task(heavy()) for _ in range(2)]
        for _ in range(200):  # the loop turns; nothing changes for the waiters
            await asyncio.sleep(0)
        looked_while_waiting = len(looks)
        release.set()
        await asyncio.gather(light, *waiting)
        assert _idle(share)
        return looked_while_waiting

    assert asyncio.run(main()) <= 8  # a handful, not one per turn of the loop


def test_a_request_cancelled_while_it_waits_leaves_nothing_behind():
    async def main():
        share, release, light = await _busy_next_to_light()
        reached = asyncio.Event()

        async def heavy():
            async with share.request("busy"):
                reached.set()
                await checkpoint()

        waiting = asyncio.create_task(heavy())
        await reached.wait()
        await _settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert "busy" not in share._running and "busy" not in share._in_flight
        await _light_ends(share, release, light)

    asyncio.run(main())


def test_a_cancel_at_a_checkpoint_after_the_store_only_ends_the_wait():
    """Once a turn is stored, a cancel (a deadline) must not report it as failed."""
    async def main():
        share, release, light = await _busy_next_to_light()
        steps = []

        async def heavy():
            async with share.request("busy"):
                await checkpoint(cancellable=False)
                steps.append("answered")
                await asyncio.sleep(0)  # the cancel is spent: later awaits go on
                steps.append("after")

        task = asyncio.create_task(heavy())
        await _settle()
        task.cancel()
        await task
        assert steps == ["answered", "after"] and not task.cancelled()
        await _light_ends(share, release, light)

    asyncio.run(main())


def test_a_request_that_ends_while_its_producer_task_waits():
    """A streaming turn's producer task shares the request; the request may end first."""
    async def main():
        share, release, light = await _busy_next_to_light()
        async with share.request("busy"):
            producer = asyncio.create_task(checkpoint())  # the context (and the request) is copied in
            await _settle()
            assert not producer.done()  # waiting for the light request
        assert "busy" not in share._running and "busy" not in share._in_flight
        await asyncio.wait_for(producer, 5)  # the request ended: it goes on at once
        await _light_ends(share, release, light)

    asyncio.run(main())


def test_a_request_ended_in_another_task_is_accounted_once():
    """grpc.aio closes an abandoned stream's generator later, from a task of its own."""
    async def main():
        share = FairShare(clock=Clock())

        async def stream():
            async with share.request("client"):
                yield 1
                yield 2

        outputs = stream()
        assert await outputs.__anext__() == 1
        await asyncio.create_task(outputs.aclose())
        assert _idle(share) and share.demand("client") >= 0.0

    asyncio.run(main())


def test_demand_decays_and_includes_requests_in_flight():
    async def main():
        clock = Clock()
        share = FairShare(clock=clock)
        await _with_history(share, clock, "c", 2.0)
        assert share.demand("c") == pytest.approx(2.0)
        clock.now += fair_share.HALF_LIFE_S
        assert share.demand("c") == pytest.approx(1.0)
        async with share.request("c"):
            clock.now += 0.5  # in flight: counted in full so far (and the past decays meanwhile)
            assert share.demand("c") == pytest.approx(0.5 + 0.5)
        clock.now += 20 * fair_share.HALF_LIFE_S
        assert share.demand("c") < 1e-5
        assert share.demand("never seen") == 0.0

    asyncio.run(main())


def test_a_request_waiting_elsewhere_holds_nobody_back_and_runs_again_after():
    """While the light request waits on a thread or a tool worker, the busy one goes on; once it is
    back on the loop, the busy one waits for it again."""
    async def main():
        clock = Clock()
        share = FairShare(clock=clock)
        await _with_history(share, clock, "busy", 1.0)
        order: list[str] = []
        away, back, light_may_end = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def light():
            async with share.request("light"):
                async with fair_share.elsewhere():
                    away.set()
                    await back.wait()  # the thread's answer
                order.append("light back")
                await light_may_end.wait()
                order.append("light ended")

        async def heavy():
            async with share.request("busy"):
                await away.wait()
                await checkpoint()
                order.append("busy past its first checkpoint")
                back.set()
                await _settle()
                await checkpoint()
                order.append("busy past its second checkpoint")

        tasks = [asyncio.create_task(light()), asyncio.create_task(heavy())]
        await _settle()
        order.append("light may end")
        light_may_end.set()
        await asyncio.gather(*tasks)
        assert _idle(share)
        return order

    assert asyncio.run(main()) == ["busy past its first checkpoint", "light back", "light may end", "light ended",
                                   "busy past its second checkpoint"]


def test_elsewhere_outside_any_request_or_after_its_end_changes_nothing():
    async def main():
        async with fair_share.elsewhere():  # warm-up: no request
            pass
        share = FairShare(clock=Clock())
        async with share.request("c"):
            away = asyncio.create_task(_away_after_end(share))
            await _settle()  # away now: the request does not count as running
            assert not share._running
        await away  # the request ended while it was away: it stays ended
        assert _idle(share)
        async with share.request("c"):
            late = asyncio.create_task(_away_after_end(share, wait_for_end=True))
        await late  # entered only once the request had ended: nothing to pause, nothing to resume
        assert _idle(share)

    asyncio.run(main())


async def _away_after_end(share: FairShare, wait_for_end: bool = False) -> None:
    if wait_for_end:
        while share._in_flight:
            await asyncio.sleep(0)
    async with fair_share.elsewhere():
        for _ in range(40):
            await asyncio.sleep(0)


def test_a_checkpoint_outside_any_request_goes_on_at_once():
    asyncio.run(asyncio.wait_for(checkpoint(), 5))


def _own_connection(address):
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return (channel, ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
            ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel)))


@pytest.mark.timeout(120)
def test_a_back_to_back_client_and_a_neighbour_have_every_turn_answered_in_order(emulator, session_name):
    """The busy client's turns wait at checkpoints while the neighbour's run; none is lost,
    repeated or reordered, on RunSession, StreamRunSession and ExecuteTool."""
    busy_channel, busy, busy_tools = _own_connection(emulator.address)
    neighbour_channel, neighbour, neighbour_tools = _own_connection(emulator.address)
    stop, failures, busy_turns, busy_now = threading.Event(), [], itertools.count(), threading.Event()
    busy_session = session_name()

    def back_to_back():
        try:
            while not stop.is_set():
                n = next(busy_turns)
                out = run(busy, busy_session, "hello " * 5_000 if n % 2 else "Hello")
                if out[-1].turn_index != n + 1:
                    failures.append(f"busy turn {n + 1} came back as {out[-1].turn_index}")
                busy_tools.execute_tool(request=ces_v1.ExecuteToolRequest(
                    tool=f"{APP}/tools/get_flight_status", args={"flight_number": "SW12"}), timeout=60)
                if n >= 1:  # two turns done: it has a busy client's demand
                    busy_now.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    thread = threading.Thread(target=back_to_back)
    thread.start()
    try:
        # It yields to the neighbour from then on, so it is busy first (else it may not get a turn in).
        assert busy_now.wait(60) or failures, "the busy client did not get two turns done"
        name = session_name()
        talk = ["Hello", "What's the status of flight SW12?", "How many bags can I check?"]
        for n, text in enumerate(talk, start=1):
            out = run(neighbour, name, text)
            assert out[-1].turn_index == n and texts(out)
        request = ces_v1.RunSessionRequest(config={"session": name}, inputs=[{"text": "What is my loyalty tier?"}])
        streamed = list(neighbour.stream_run_session(request=request, timeout=60))
        assert streamed[-1].outputs[-1].turn_index == len(talk) + 1
        answer = neighbour_tools.execute_tool(request=ces_v1.ExecuteToolRequest(
            tool=f"{APP}/tools/get_flight_status", args={"flight_number": "SW12"}), timeout=60)
        assert answer.tool.endswith("/tools/get_flight_status")
    finally:
        stop.set()
        thread.join(60)
        busy_channel.close()
        neighbour_channel.close()
    assert not failures, failures
    assert next(busy_turns) >= 2  # it really was busy meanwhile
