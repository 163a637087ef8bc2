"""Fair shares of one event loop between clients: a client that keeps the emulator busy all the
time gives way, between the steps of its requests, to clients that do not.

A worker runs every turn on one event loop. Two turns at once share it, so each takes about as
long as both: a notebook user's turn next to a client sending turns back to back (a load test, an
evaluation script, a hostile client) took twice as long (benchmarks/isolation.py). Here each client
connection (gRPC's peer: one channel, or one REST client's connection) has a demand: the seconds
it had requests in flight, decaying with a half-life of HALF_LIFE_S. At a checkpoint (a turn's
start, its session's creation, each event of its agents, its store write; a tool call's start) a
request waits while a request runs of a client with less than YIELD_BELOW of its client's demand,
until that one ends or waits itself, and at most MAX_PARK_S in all, so nobody starves. A request
that waits on another thread or process (`elsewhere`: the store's writer thread, a tool worker, a
conversion in a thread) does not count as running meanwhile: the loop is free, and heavier
requests parked for it go on. Requests of
one client never wait for each other, and clients that are all always busy have the same demand
and share the loop as before. The EvaluationService's runs are one client ("evaluation runs");
a request outside any client (warm-up) never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time

HALF_LIFE_S = 0.5
# A request waits for those of clients with less than this fraction of its client's demand.
YIELD_BELOW = 0.75
# The longest a request waits, across all its checkpoints.
MAX_PARK_S = 0.25
# With more clients than this running at once (a load test), nobody waits: when every client is
# busy, none is lighter, and comparing them would cost every checkpoint a scan of them all.
MAX_CLIENTS = 8
# A client is forgotten once its demand has decayed below this many seconds.
FORGET_BELOW_S = 1e-3


class _Request:
    """One request: its client, whether it counts as running now (not waiting at a checkpoint, and
    not ended), whether it ended, and how long it has waited. A streaming turn's producer task
    shares its request (the context is copied into the task), and may still be at a checkpoint
    when the request ends, or the request may end in another task (grpc closes an abandoned
    stream's generator later): so each flips only its own state, once."""

    __slots__ = ("share", "client", "started", "running", "ended", "parked_s")

    def __init__(self, share: "FairShare", client: str, started: float):
        self.share, self.client, self.started = share, client, started
        self.running, self.ended, self.parked_s = False, False, 0.0


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("ces_nb_fair_share", default=None)


class FairShare:
    """One event loop's clients: their demands, their requests in flight and those running now."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._past: dict[str, tuple[float, float]] = {}  # client -> (seconds of ended requests, as of when)
        self._in_flight: dict[str, list[float]] = {}  # client -> [requests, the sum of their start times]
        self._running: dict[str, int] = {}  # client -> its requests running now (not waiting here)
        self._changed = asyncio.Event()  # set (and replaced) whenever a request stops running
        self._prune_above = 64

    def demand(self, client: str, now: float | None = None) -> float:
        """The client's seconds of requests in flight, those that ended decaying by HALF_LIFE_S,
        and those in flight now in full so far."""
        now = self._clock() if now is None else now
        seconds, when = self._past.get(client, (0.0, now))
        flight = self._in_flight.get(client)
        return seconds * math.exp2((when - now) / HALF_LIFE_S) + (flight[0] * now - flight[1] if flight else 0.0)

    @contextlib.asynccontextmanager
    async def request(self, client: str | None):
        """One request of `client` from start to end: its wall time, waits here included (a client
        that is always waiting is always busy), counts toward the client's demand."""
        if client is None:
            yield
            return
        request = _Request(self, client, self._clock())
        flight = self._in_flight.setdefault(client, [0, 0.0])
        flight[0] += 1
        flight[1] += request.started
        self._run(request)
        token = _current.set(request)
        try:
            yield
        finally:
            self._end(request)
            try:
                _current.reset(token)
            except ValueError:  # ended in another context (a stream's generator closed later): nothing to undo there
                pass

    def _end(self, request: _Request) -> None:
        if request.ended:
            return
        if request.running:
            self._pause(request)
        request.ended = True
        client, now = request.client, self._clock()
        flight = self._in_flight[client]
        past = self.demand(client, now) - (flight[0] * now - flight[1])
        flight[0] -= 1
        flight[1] -= request.started
        if not flight[0]:
            del self._in_flight[client]
        self._past[client] = (past + (now - request.started), now)
        if len(self._past) > self._prune_above:  # clients come and go with their connections
            self._past = {c: v for c, v in self._past.items()
                          if c in self._in_flight or self.demand(c, now) > FORGET_BELOW_S}
            self._prune_above = max(64, 2 * len(self._past))

    async def _checkpoint(self, request: _Request) -> None:
        if request.ended or not request.running:
            return
        budget = MAX_PARK_S - request.parked_s
        if budget <= 0 or not self._lighter_running(request.client):
            return
        self._pause(request)  # which may let a heavier one go on: that wakes the waiters
        began = self._clock()
        try:
            async with asyncio.timeout(budget):
                # Woken by any request that stops running; look again, without running in between
                # (two waiters that each woke the other would spin the loop).
                while not request.ended and self._lighter_running(request.client):
                    await self._changed.wait()
        except TimeoutError:
            pass
        finally:
            request.parked_s += self._clock() - began
            if not request.ended:
                self._run(request)

    def _lighter_running(self, client: str) -> bool:
        if len(self._running) > MAX_CLIENTS:
            return False
        now = self._clock()
        below = YIELD_BELOW * self.demand(client, now)
        return any(other != client and self.demand(other, now) < below for other in self._running)

    def _run(self, request: _Request) -> None:
        # no wake: one more running request lets no waiting one go on
        request.running = True
        self._running[request.client] = self._running.get(request.client, 0) + 1

    def _pause(self, request: _Request) -> None:
        request.running = False
        count = self._running[request.client] - 1
        if count:
            self._running[request.client] = count
        else:
            del self._running[request.client]
        self._changed.set()
        self._changed = asyncio.Event()


async def checkpoint(*, cancellable: bool = True) -> None:
    """Between two steps of a request: wait while a lighter client's request runs (see above).
    `cancellable=False` once the request's outcome is stored: a cancel (a deadline, a client gone)
    while waiting there only ends the wait, as if it had come after the answer; raised, it would
    report a stored turn as failed, and a retry would store it twice."""
    request = _current.get()
    if request is None:
        return
    try:
        await request.share._checkpoint(request)
    except asyncio.CancelledError:
        if cancellable:
            raise
        asyncio.current_task().uncancel()


@contextlib.asynccontextmanager
async def elsewhere():
    """Around an await on another thread or process: meanwhile the request does not count as
    running, so requests parked for it go on instead of leaving the loop idle (at most MAX_PARK_S
    did: a tool worker's answer, a big turn's store write). It counts as running again after."""
    request = _current.get()
    if request is None or request.ended or not request.running:
        yield
        return
    request.share._pause(request)
    try:
        yield
    finally:
        if not request.ended:
            request.share._run(request)
