"""Fair shares of one event loop between clients: a client that keeps the emulator busy all the
time gives way, between the steps of its requests, to clients that do not.

A worker runs every turn on one event loop. Two turns at once share it, so each takes about as
long as both: a notebook user's turn next to a client sending turns back to back (a load test, an
evaluation script, a hostile client) took twice as long (benchmarks/isolation.py). Here each client
connection (gRPC's peer: one channel, or one REST client's connection) has a demand: the seconds
it had requests in flight, decaying with a half-life of HALF_LIFE_S. At a checkpoint (a turn's
start, its session's creation, each event of its agents, its store write; a tool call's start) a
request waits while a request runs of a client with less than YIELD_BELOW of its client's demand,
until that one ends or waits itself, and at most MAX_PARK_S in all, so nobody starves. Requests of
one client never wait for each other, and clients that are all always busy have the same demand
and share the loop as before. A request outside any client (warm-up, an evaluation run's turns)
never waits.
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
    __slots__ = ("share", "client", "parked_s")

    def __init__(self, share: "FairShare", client: str):
        self.share, self.client, self.parked_s = share, client, 0.0


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("ces_nb_fair_share", default=None)


class FairShare:
    """One event loop's clients: their demands, their requests in flight and those running now."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._past: dict[str, tuple[float, float]] = {}  # client -> (seconds of ended requests, as of when)
        self._in_flight: dict[str, list[float]] = {}  # client -> [requests, the sum of their start times]
        self._running: dict[str, int] = {}  # client -> its requests running now (not waiting here)
        self._changed = asyncio.Event()

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
        request = _Request(self, client)
        token = _current.set(request)
        started = self._clock()
        flight = self._in_flight.setdefault(client, [0, 0.0])
        flight[0] += 1
        flight[1] += started
        self._enter(client)
        try:
            yield
        finally:
            self._leave(client)
            _current.reset(token)
            now = self._clock()
            past = self.demand(client, now) - (flight[0] * now - flight[1])
            flight[0] -= 1
            flight[1] -= started
            if not flight[0]:
                del self._in_flight[client]
            self._past[client] = (past + (now - started), now)
            if len(self._past) > 64:  # clients come and go with their connections
                self._past = {c: v for c, v in self._past.items()
                              if c in self._in_flight or self.demand(c, now) > FORGET_BELOW_S}

    async def _checkpoint(self, request: _Request) -> None:
        while 1 < len(self._running) <= MAX_CLIENTS:
            budget = MAX_PARK_S - request.parked_s
            if budget <= 0 or not self._lighter_running(request.client):
                return
            self._leave(request.client)  # which may let a heavier one go on: that wakes the waiters
            changed = self._changed
            began = self._clock()
            try:
                await asyncio.wait_for(changed.wait(), budget)
            except asyncio.TimeoutError:
                pass
            finally:
                request.parked_s += self._clock() - began
                self._enter(request.client)

    def _lighter_running(self, client: str) -> bool:
        now = self._clock()
        below = YIELD_BELOW * self.demand(client, now)
        return any(other != client and self.demand(other, now) < below for other in self._running)

    def _enter(self, client: str) -> None:
        # no wake: one more running request lets no waiting one go on
        self._running[client] = self._running.get(client, 0) + 1

    def _leave(self, client: str) -> None:
        count = self._running[client] - 1
        if count:
            self._running[client] = count
        else:
            del self._running[client]
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


async def checkpoint() -> None:
    """Between two steps of a request: wait while a lighter client's request runs (see above)."""
    request = _current.get()
    if request is not None:
        await request.share._checkpoint(request)
