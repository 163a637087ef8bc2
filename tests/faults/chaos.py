"""A chaos run: sessions driven through ces_nb from a few threads while the emulator is
kill -9'd and restarted on the same SQLite file and port, then the store is checked.

    plan(seed)      which sessions run which turns: the same operations for the same seed
    Emulator        the victim: one emulator process at a fixed address on one file store
    Monkey          when and where to kill: at seeded points of the run, aimed at what a
                    driver is doing (a unary turn, a stream, a bidi turn, a tool call ...)
    Driver          one session, run like a notebook user would: a cell that failed because
                    the emulator was down is re-run after the restart, and so is a turn that
                    came back partial
    check_store     the invariants, read back through ListConversations / GetConversation
    leftovers       processes the emulators left behind, found in /proc

Only the timing of a kill is left to chance; what runs, and what each kill aims at, is the seed's.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import grpc

import ces_nb
from ces_nb.errors import CesError

from emulator_process import EmulatorProcess

APP = "projects/chaos/locations/us/apps/skyway"
MARKER_ENV = "CES_NB_CHAOS_RUN"  # set for the emulators: their descendants carry it, orphaned or not

# What a user says to the demo app; each phrase is an example conversation's first line.
PHRASES = (
    "Hello",
    "What's the status of flight SW12?",  # the python tool: a worker subprocess
    "How many bags can I check?",
    "What is my loyalty tier?",
    "Can I bring my cat on the plane?",
    "Are there any travel advisories for Denver?",
)
BOOK = "I'd like to book a seat on flight SW123"  # -> select_seat, a client tool call
PAY = "Yes, please charge my card"                # -> confirm_payment, another one
GOODBYE = "That's all, thanks. Goodbye!"          # -> end_session
AFTER_END = "Hello again"
VIAS = ("send", "stream")
STYLES = ("text", "stream", "bidi", "tools", "mixed")

RESTART_WAIT_S = 60.0    # a driver waits this long for the emulator to be back
RETRY_PAUSE_S = 0.2      # between re-runs of a failed cell
GIVE_UP_S = 45.0         # a turn still failing this long after its first attempt is a problem
BIDI_TURN_TIMEOUT_S = 20.0
AIM_S = 6.0              # how long a kill waits for its target before striking anyway
WORKER_EXIT_GRACE_S = 10.0


# -- the plan: deterministic for a seed ------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One step of a session. kind: say | book | pay | answer | goodbye | probe | bidi."""

    kind: str
    via: str = "send"             # send (RunSession), stream (StreamRunSession), bidi (BidiRunSession)
    texts: tuple[str, ...] = ()   # one per turn; a bidi op runs them all on one stream
    think_s: float = 0.0          # answer: how long the user looks at the tool-call form

    @property
    def turns(self) -> int:
        return max(1, len(self.texts))


@dataclass(frozen=True)
class Script:
    session_id: str
    style: str
    ops: tuple[Op, ...]


def plan(seed: int, sessions: int = 50) -> list[Script]:
    """`sessions` scripts, every style equally often, in a seeded order."""
    rng = random.Random(seed)
    styles = [STYLES[n % len(STYLES)] for n in range(sessions)]
    rng.shuffle(styles)
    return [Script(f"chaos-{seed}-{n:02d}", style, tuple(_ops(style, rng))) for n, style in enumerate(styles)]


def _ops(style: str, rng: random.Random) -> list[Op]:
    def say(via: str) -> Op:
        return Op("say", via, (rng.choice(PHRASES),))

    def booking() -> list[Op]:
        ops = [Op("book", rng.choice(VIAS), (BOOK,)), Op("answer", rng.choice(VIAS), think_s=round(rng.uniform(0.05, 0.4), 2))]
        if rng.random() < 0.6:
            ops += [Op("pay", rng.choice(VIAS), (PAY,)), Op("answer", rng.choice(VIAS), think_s=round(rng.uniform(0.05, 0.4), 2))]
        return ops

    if style == "text":
        ops = [say("send") for _ in range(rng.randint(2, 4))]
    elif style == "stream":
        ops = [say("stream") for _ in range(rng.randint(2, 4))]
    elif style == "bidi":
        ops = [Op("bidi", "bidi", tuple(rng.sample(PHRASES, rng.randint(2, 3))))]
    elif style == "tools":
        ops = ([say(rng.choice(VIAS))] if rng.random() < 0.5 else []) + booking()
    else:  # mixed: unary, stream, bidi and a booking in one session
        parts = [[say("send")], [say("stream")], [Op("bidi", "bidi", tuple(rng.sample(PHRASES, rng.randint(1, 2))))], booking()]
        rng.shuffle(parts)
        ops = [op for part in parts[:rng.randint(2, 4)] for op in part]
    if rng.random() < 0.4:
        ops.append(Op("goodbye", rng.choice(("send", "stream", "bidi")), (GOODBYE,)))
        if rng.random() < 0.6:
            ops.append(Op("probe", "send", (AFTER_END,)))
    return ops


# -- the victim ---------------------------------------------------------------------------

class Emulator:
    """One emulator at a fixed address on one SQLite file, killed and restarted in place."""

    def __init__(self, db: str, port: int, *args: str):
        self.db, self.port, self.args = db, port, args
        self.address = f"127.0.0.1:{port}"
        self.up = threading.Event()
        self.generation = 0          # 1 for the first process, +1 per restart
        self.pids: list[int] = []
        self.process: EmulatorProcess | None = None
        self.broken: str | None = None  # why a restart failed: drivers stop waiting for it
        self.lineage = Lineage(self)

    def start(self) -> float:
        started = time.monotonic()
        self.process = EmulatorProcess("--db", self.db, *self.args, port=self.port)
        self.pids.append(self.process.pid)
        self.generation += 1
        self.up.set()
        return time.monotonic() - started

    def kill(self) -> tuple[int, list[int]]:
        """kill -9, as a crash would; returns the pid and the children it had then."""
        self.up.clear()
        process = self.process
        self.lineage.note(process.pid)
        children = child_pids(process.pid)
        process.kill()
        process.stop()  # reaped already: this only removes its log file
        return process.pid, children

    def stop(self) -> int:
        self.up.clear()
        self.lineage.done.set()
        if self.process is None:
            return 0
        self.lineage.note(self.process.pid)
        return self.process.stop()


# -- what the drivers are doing, for the monkey to aim at ---------------------------------------

class Board:
    """What each driver thread is doing now, and how far the run has got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doing: dict[str, tuple[str, str]] = {}
        self.turns_completed = 0  # the run's progress: retries spinning on a dead emulator don't count
        self.finished = threading.Event()  # every driver is done
        self.aborted = threading.Event()   # the run is being torn down: restart nothing

    def completed(self) -> None:
        with self._lock:
            self.turns_completed += 1

    @contextmanager
    def doing(self, state: str, label: str):
        me = threading.current_thread().name
        with self._lock:
            self._doing[me] = (state, label)
        try:
            yield
        finally:
            with self._lock:
                self._doing.pop(me, None)

    def snapshot(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._doing.values())

    def find(self, states: set[str]) -> bool:
        with self._lock:
            return any(state in states for state, _ in self._doing.values())


@dataclass(frozen=True)
class Target:
    checkpoints: frozenset = frozenset()  # a driver reaching one of these pulls the trigger itself
    watch: frozenset = frozenset()        # the monkey strikes when a driver is in one of these
    jitter_s: tuple[float, float] = (0.0, 0.0)  # ... this long after it saw it


TARGETS = {
    "mid unary turn": Target(watch=frozenset({"send"}), jitter_s=(0.0, 0.05)),
    "mid stream": Target(checkpoints=frozenset({"stream"})),
    "mid bidi turn": Target(watch=frozenset({"bidi"}), jitter_s=(0.02, 0.2)),
    "mid tool-call wait": Target(checkpoints=frozenset({"tool-wait"})),
    "mid tool answer": Target(checkpoints=frozenset({"answer-stream"}), watch=frozenset({"answer-send"}), jitter_s=(0.0, 0.03)),
    "random moment": Target(),
}


@dataclass
class Fault:
    n: int
    target: str
    hit: bool                # the kill landed in what it aimed at
    in_flight: list          # (state, label) of every driver at the moment of the kill
    generation: int          # the emulator killed
    pid: int
    children: list
    down_s: float = 0.0
    restart_s: float = 0.0


class Monkey(threading.Thread):
    """Kills the emulator `restarts` times, each aimed at one target, and restarts it."""

    def __init__(self, emulator: Emulator, board: Board, rng: random.Random, total_turns: int, restarts: int):
        super().__init__(name="chaos-monkey", daemon=True)
        self.emulator, self.board, self.rng = emulator, board, rng
        names = list(TARGETS)
        order = [names[n % len(names)] for n in range(restarts)]
        rng.shuffle(order)
        # The k-th kill waits until the drivers have completed this many turns: spread over the
        # run, and done by 3/4 of it, so the drivers are still busy when the last one lands.
        slot = 0.7 / max(1, restarts)
        self.schedule = [(name, int(total_turns * (0.05 + slot * k + rng.uniform(0, slot)))) for k, name in enumerate(order)]
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._armed: Target | None = None
        self._fired = threading.Event()

    def checkpoint(self, state: str) -> None:
        """Drivers call this where a kill may land; it kills when the armed target names it."""
        with self._lock:
            aimed = self._armed is not None and state in self._armed.checkpoints
        if aimed:
            self._strike(hit=True)

    def _strike(self, hit: bool) -> None:
        with self._lock:
            if self._armed is None:
                return  # someone else struck first
            self._armed = None
            in_flight = self.board.snapshot()
            generation = self.emulator.generation
            pid, children = self.emulator.kill()
            self._last = (hit, in_flight, generation, pid, children)
            self._fired.set()

    def run(self) -> None:
        try:
            for n, (name, at_turn) in enumerate(self.schedule, 1):
                while self.board.turns_completed < at_turn and not (self.board.finished.is_set() or self.board.aborted.is_set()):
                    time.sleep(0.005)
                if self.board.finished.is_set() or self.board.aborted.is_set():
                    return
                self._aim(TARGETS[name])
                hit, in_flight, generation, pid, children = self._last
                fault = Fault(n, name, hit, in_flight, generation, pid, children)
                fault.down_s = round(self.rng.uniform(0.2, 1.0), 2)  # sends in this window find nobody
                time.sleep(fault.down_s)
                if self.board.aborted.is_set():
                    return
                fault.restart_s = round(self.emulator.start(), 2)
                self.faults.append(fault)
        except BaseException as exc:  # a failed restart: reported, and the drivers are let go
            self.error = exc
            self.emulator.broken = str(exc)
            self.emulator.up.set()

    def _aim(self, target: Target) -> None:
        self._fired.clear()
        with self._lock:
            self._armed = target
        if not target.checkpoints and not target.watch:
            self._strike(hit=True)
            return
        deadline = time.monotonic() + AIM_S
        while not self._fired.is_set() and time.monotonic() < deadline:
            if target.watch and self.board.find(set(target.watch)):
                time.sleep(self.rng.uniform(*target.jitter_s))
                self._strike(hit=self.board.find(set(target.watch | target.checkpoints)))
                break
            time.sleep(0.002)
        self._strike(hit=False)  # nothing of the kind came along in time: strike anyway
        self._fired.wait()


# -- the drivers ---------------------------------------------------------------------------

@dataclass
class Attempt:
    session: str
    op: int
    kind: str
    via: str
    text: str
    attempt: int
    outcome: str       # completed, partial, or the error's gRPC code (UNAVAILABLE, ...)
    generation: int    # the emulator up when the attempt started
    detail: str = ""
    seconds: float = 0.0


SEAT = {"seat": "2A", "confirmed": True, "price": 340.0}
PAYMENT = {"approved": True, "reference": "PNR8K2"}


class Driver:
    """Runs one script on its own Session, re-running what failed as a user re-runs a cell."""

    def __init__(self, client, script: Script, emulator: Emulator, board: Board, monkey: Monkey):
        self.script, self.emulator, self.board, self.monkey = script, emulator, board, monkey
        self.session = client.session(session_id=script.session_id, enable_text_streaming=True)
        self.attempts: list[Attempt] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.calls: list = []               # client tool calls of the latest completed turn
        self.answered_by_server: list[str] = []  # call ids the server refused as no longer pending
        self.ended = False                  # a completed turn carried end_session
        self.refused_as_ended = False       # a re-run was refused because the session had ended
        self._started = time.monotonic()    # when the current attempt began

    @property
    def requests(self) -> int:
        """Turn requests sent, failed or not: the store can hold no more turns than this."""
        return len(self.attempts)

    def run(self) -> None:
        try:
            for i, op in enumerate(self.script.ops):
                getattr(self, f"_{op.kind}")(i, op)
        except Exception:
            self.problems.append(f"{self.session.id}: the driver crashed:\n{traceback.format_exc()}")

    # -- one turn, re-run until it completes ------------------------------------------------

    def _again(self, attempt: int, since: float) -> bool:
        """Before re-running a cell: wait for the emulator to be back. The first attempt goes
        at once, as a user who does not know the emulator is down would send it."""
        if attempt == 1:
            return True
        time.sleep(RETRY_PAUSE_S)
        return self.emulator.up.wait(RESTART_WAIT_S) and not self.emulator.broken and time.monotonic() - since < GIVE_UP_S

    def _turn(self, i: int, op: Op, text: str, state: str, call: Callable[[], object]):
        """(the completed Turn, or the CesError that is not the emulator being down; attempts)."""
        since, attempt = time.monotonic(), 0
        while self._again(attempt + 1, since):
            attempt += 1
            generation, self._started = self.emulator.generation, time.monotonic()
            try:
                with self.board.doing(state, f"{self.session.id} op {i} {op.kind} via {op.via}"):
                    turn = call()
            except CesError as exc:
                code = exc.code.name if exc.code else "no code"
                self._record(i, op, text, attempt, code, generation, str(exc)[:300])
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    continue
                return exc, attempt
            if turn.partial:
                self._record(i, op, text, attempt, "partial", generation, turn.error or "")
                continue
            self._record(i, op, text, attempt, "completed", generation)
            return turn, attempt
        self.problems.append(f"{self.session.id} op {i} ({op.kind} via {op.via}): no completed turn after {attempt} attempts")
        return None, attempt

    def _record(self, i, op, text, attempt, outcome, generation, detail="") -> None:
        if outcome == "completed":
            self.board.completed()
        self.attempts.append(Attempt(self.session.id, i, op.kind, op.via, text, attempt, outcome, generation, detail,
                                     round(time.monotonic() - self._started, 3)))

    def _say_turn(self, i: int, op: Op, text: str):
        if op.via == "stream":
            def streamed():
                return self.session.stream(text, on_output=lambda _turn: self.monkey.checkpoint("stream"))
            return self._turn(i, op, text, "stream", streamed)
        return self._turn(i, op, text, "send", lambda: self.session.send(text))

    def _after(self, i: int, op: Op, result, attempt: int) -> None:
        if isinstance(result, CesError):
            if op.kind == "goodbye" and result.code == grpc.StatusCode.FAILED_PRECONDITION and attempt > 1:
                # An earlier attempt ended the session on the server before the kill: check_store
                # makes sure a stored turn did end it.
                self.refused_as_ended = True
                return
            self.problems.append(f"{self.session.id} op {i} ({op.kind} via {op.via}, attempt {attempt}): {result}")
            return
        if result is None:
            return
        self.calls = result.tool_calls
        self.ended = self.ended or result.ended

    # -- the steps ---------------------------------------------------------------------------------

    def _say(self, i: int, op: Op) -> None:
        result, attempt = self._say_turn(i, op, op.texts[0])
        self._after(i, op, result, attempt)

    def _book(self, i: int, op: Op) -> None:
        self._say(i, op)
        if not any(c.name == "select_seat" for c in self.calls):
            self.notes.append(f"{self.session.id} op {i}: the booking turn asked for no seat ({[c.name for c in self.calls]})")

    _pay = _say

    def _goodbye(self, i: int, op: Op) -> None:
        (self._bidi if op.via == "bidi" else self._say)(i, op)

    def _answer(self, i: int, op: Op) -> None:
        calls, self.calls = self.calls, []
        if not calls:
            self.notes.append(f"{self.session.id} op {i}: no client tool call to answer")
            return
        with self.board.doing("tool-wait", f"{self.session.id} op {i} holding {[c.name for c in calls]}"):
            self.monkey.checkpoint("tool-wait")
            time.sleep(op.think_s)  # the user fills in the form
        answers = {c.id: dict(PAYMENT if c.name == "confirm_payment" else SEAT) for c in calls}
        label = "answer " + ", ".join(c.name for c in calls)
        if op.via == "stream":
            result, attempt = self._turn(i, op, label, "answer-stream", lambda: self.session.respond(
                answers, stream=True, on_output=lambda _t: self.monkey.checkpoint("answer-stream")))
        else:
            result, attempt = self._turn(i, op, label, "answer-send", lambda: self.session.respond(answers))
        if isinstance(result, CesError) and result.code == grpc.StatusCode.INVALID_ARGUMENT and attempt > 1 \
                and "matches no pending tool call" in str(result):
            # An earlier attempt reached the server: right only if a stored turn took the answer
            # (check_store looks for it).
            self.answered_by_server += list(answers)
            return
        self._after(i, op, result, attempt)

    def _probe(self, i: int, op: Op) -> None:
        """After end_session the agent takes no more input, across restarts too."""
        if not (self.ended or self.refused_as_ended):
            self.notes.append(f"{self.session.id} op {i}: probe skipped, the session did not end")
            return
        result, attempt = self._turn(i, op, op.texts[0], "send", lambda: self.session.send(op.texts[0]))
        if isinstance(result, CesError) and result.code == grpc.StatusCode.FAILED_PRECONDITION:
            return
        self.problems.append(f"{self.session.id} op {i}: input after end_session was not refused with FAILED_PRECONDITION: {result!r}")

    def _bidi(self, i: int, op: Op) -> None:
        """All of op.texts on one BidiRunSession; a broken stream is reopened for the rest."""
        done, attempt, since = 0, 0, time.monotonic()
        label = f"{self.session.id} op {i} {op.kind} via bidi"
        while done < len(op.texts):
            if not self._again(attempt + 1, since):
                self.problems.append(f"{label}: no completed turn for {op.texts[done]!r} after {attempt} attempts")
                return
            with self.session.live() as live:
                while done < len(op.texts):
                    attempt += 1
                    text, generation, self._started = op.texts[done], self.emulator.generation, time.monotonic()
                    with self.board.doing("bidi", label):
                        try:  # a stream that could not open (the emulator is down) says so at the first send
                            live.send_text(text)
                            turn = live.next_turn(timeout=BIDI_TURN_TIMEOUT_S)
                        except CesError as exc:
                            turn = exc
                    if isinstance(turn, CesError):
                        code = turn.code.name if turn.code else "no code"
                        self._record(i, op, text, attempt, code, generation, str(turn)[:300])
                        if turn.code == grpc.StatusCode.UNAVAILABLE:
                            break  # reopen after the restart
                        self._after(i, op, turn, attempt)
                        return
                    if turn.partial:
                        self._record(i, op, text, attempt, "partial", generation, turn.error or "")
                        break
                    self._record(i, op, text, attempt, "completed", generation)
                    self._after(i, op, turn, attempt)
                    done += 1
                    since = time.monotonic()


# -- the invariants -------------------------------------------------------------------------------

def _squash(text: str) -> str:
    return "".join(text.split())


def _stored_io(stored_turn) -> tuple[str, set[str], str, bool]:
    """(user text, tool response ids, agent text, ended) of a stored Conversation.Turn."""
    user, ids, agent, ended = [], set(), [], False
    for message in stored_turn.messages:
        for chunk in message.chunks:
            if message.role == "user":
                if chunk.text:
                    user.append(chunk.text)
                if chunk.tool_response.id:
                    ids.add(chunk.tool_response.id)
            else:
                if chunk.text:
                    agent.append(chunk.text)
                if chunk.tool_call.display_name == "end_session" or chunk.tool_call.tool.endswith("end_session"):
                    ended = True
    return " ".join(user), ids, "".join(agent), ended


def _start_ns(span) -> int | None:
    pb = type(span).pb(span) if hasattr(type(span), "pb") else span
    return pb.start_time.ToNanoseconds() if pb.HasField("start_time") else None


def check_store(client, drivers: list[Driver]) -> list[str]:
    """Every turn a client saw complete is stored exactly once, at its index, with its spans."""
    problems: list[str] = []
    listing = {c.name: c for c in client.agents.list_conversations(request={"parent": APP, "page_size": 20})}
    for d in drivers:
        sid = d.session.id
        name = f"{APP}/conversations/{sid}"
        completed = [t for t in d.session.turns if t.completed]
        indexes = [t.index for t in completed]
        if any(b <= a for a, b in zip(indexes, indexes[1:])):
            problems.append(f"{sid}: the client saw completed turns with indexes {indexes}: an index was reused")
        if not completed and not d.answered_by_server and not d.refused_as_ended:
            continue
        try:
            conversation = client.agents.get_conversation(name=name)
        except Exception as exc:
            problems.append(f"{sid}: {len(completed)} completed turn(s) but GetConversation failed: {exc}")
            continue
        stored = list(conversation.turns)
        if name not in listing:
            problems.append(f"{sid}: GetConversation has it, ListConversations does not")
        elif listing[name].turn_count != len(stored):
            problems.append(f"{sid}: ListConversations says {listing[name].turn_count} turns, GetConversation holds {len(stored)}")
        if len(stored) > d.requests:
            problems.append(f"{sid}: {len(stored)} stored turns from only {d.requests} turn requests")
        starts = [_start_ns(s.root_span) for s in stored]
        twice = [n for n, c in Counter(starts).items() if c > 1]
        if twice:
            problems.append(f"{sid}: stored turns share a root span start ({len(twice)} duplicated turn records)")
        for turn in completed:
            key = turn.root_span.start_ns if turn.root_span else None
            where = [n for n, s in enumerate(starts, 1) if key is not None and s == key]
            what = f"{sid} turn {turn.index} ({turn.user_text or [i.kind for i in turn.inputs]!r})"
            if len(where) != 1:
                problems.append(f"{what}: completed on the client, stored {len(where)} times (of {len(stored)} stored turns)")
                continue
            if where[0] != turn.index:
                notes = f"; the client's notes: {' '.join(turn.notes)}" if turn.notes else ""
                problems.append(f"{what}: the client numbers it {turn.index}, GetConversation stores it as turn {where[0]}{notes}")
            record = stored[where[0] - 1]
            if record.root_span.name != "root" or not record.root_span.child_spans:
                problems.append(f"{what}: stored without its spans (root_span {record.root_span.name!r}, "
                                f"{len(record.root_span.child_spans)} children)")
            user, ids, agent, _ended = _stored_io(record)
            sent_ids = {r.id for i in turn.inputs if i.kind == "tool_responses" for r in i.value}
            if _squash(user) != _squash(turn.user_text) or ids != sent_ids:
                problems.append(f"{what}: stored with other input: {user!r} {sorted(ids)} (sent {sorted(sent_ids)})")
            if _squash(agent) != _squash("".join(turn.of_kind("text"))):
                problems.append(f"{what}: stored with other agent text: {agent!r} (client got {turn.text!r})")
        taken = set().union(*(_stored_io(s)[1] for s in stored)) if stored else set()
        for call_id in d.answered_by_server:
            if call_id not in taken:
                problems.append(
                    f"{sid}: the re-sent answer to tool call {call_id} was refused as 'matches no pending tool call', "
                    f"yet no stored turn took it: a turn killed mid-way swallowed the answer, and the agent never replied to it")
        if d.refused_as_ended and not any(_stored_io(s)[3] for s in stored):
            problems.append(f"{sid}: a re-run goodbye was refused as ended, yet no stored turn ended the session")
    return problems


# -- processes left behind ---------------------------------------------------------------------------
#
# A process an emulator of this run started is known three ways: it is still the child of an
# emulator pid; it was seen descending from one (Lineage samples the tree, and notes it again
# just before each kill and the final stop); or it carries the run's marker in its environment.
# Python tool workers get a scrubbed environment, so for them the lineage is what counts.
# Only this run's processes count: other tests on the machine run emulators and workers too.

def _proc(pid, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses):
    [0] state, [1] ppid, ... [19] start time."""
    return _proc(pid, "stat").decode(errors="replace").rpartition(")")[2].split()


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, start time) of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(name)
            if len(fields) > 19:
                out[int(name)] = (int(fields[1]), fields[0], fields[19])
    return out


def descendants(roots: list[int], table: dict | None = None) -> set[tuple[int, str]]:
    """(pid, start time) of every process below `roots`; the start time tells a reused pid apart."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.add((child, table[child][2]))
            todo.append(child)
    return found


def child_pids(pid: int) -> list[int]:
    return sorted(p for p, _start in descendants([pid]))


class Lineage(threading.Thread):
    """Notes the descendants of the live emulator every `every_s` until stopped."""

    def __init__(self, emulator: "Emulator", every_s: float = 0.1):
        super().__init__(name="chaos-lineage", daemon=True)
        self.emulator, self.every_s = emulator, every_s
        self.seen: set[tuple[int, str]] = set()
        self.done = threading.Event()

    def note(self, pid: int) -> None:
        self.seen |= descendants([pid])

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            process = self.emulator.process
            if process is not None:
                self.note(process.pid)


def leftovers(marker: str, emulator_pids: list[int], seen: set[tuple[int, str]] = frozenset()) -> list[str]:
    """Live processes an emulator of this run started (see above), python workers above all."""
    found = []
    pids, tag = set(emulator_pids), f"{MARKER_ENV}={marker}".encode()
    for pid, (ppid, state, start) in _processes().items():
        if pid == os.getpid() or state == "Z":
            continue  # a zombie runs nothing; its parent has yet to reap it
        if ppid in pids or (pid, start) in seen or tag in _proc(pid, "environ").split(b"\0"):
            cmd = _proc(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"pid {pid} (parent {ppid}): {cmd[:200]}")
    return found


def wait_for_no_leftovers(marker: str, emulator_pids: list[int], seen: set[tuple[int, str]],
                          grace_s: float = WORKER_EXIT_GRACE_S) -> list[str]:
    """A worker whose emulator died goes with it (or at the end of its pipe); give it a moment to."""
    deadline = time.monotonic() + grace_s
    while True:
        found = leftovers(marker, emulator_pids, seen)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# -- a whole run -----------------------------------------------------------------------------------------

@dataclass
class Report:
    seed: int
    scripts: list[Script]
    drivers: list[Driver] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    descendants_seen: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        attempts = [a for d in self.drivers for a in d.attempts]
        completed = sum(1 for d in self.drivers for t in d.session.turns if t.completed)
        lines = [f"chaos seed {self.seed} (replay: make chaos SEED={self.seed}): {len(self.scripts)} sessions, "
                 f"{completed} completed turns, {len(attempts)} turn requests, {len(self.faults)} kill -9 + restart, "
                 f"{self.seconds:.1f} s"]
        chaotic = [a for a in attempts if a.outcome != "completed" and not (a.kind == "probe" and a.outcome == "FAILED_PRECONDITION")]
        for f in self.faults:
            failed = Counter(f"{a.kind}/{a.via}:{a.outcome}" for a in chaotic if a.generation == f.generation)
            doing = "; ".join(f"{state} [{label}]" for state, label in f.in_flight) or "nothing"
            lines.append(f"  kill {f.n} {f.target!r} ({'hit' if f.hit else 'missed its target'}): pid {f.pid} "
                         f"(children {f.children}) while {doing}; down {f.down_s} s, restarted in {f.restart_s} s; "
                         f"interrupted: {dict(failed) or 'none'}")
        outcomes = Counter(a.outcome for a in attempts)
        lines.append(f"  attempt outcomes: {dict(outcomes)} (the FAILED_PRECONDITION of probes after end_session are expected)")
        busy = Counter()
        for a in attempts:
            busy[a.via] += a.seconds
        lines.append("  seconds in turns, by way: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(busy.items())))
        lines.append("  turns that did not complete at once (attempt numbers: outcome, on which emulator):")
        for key, group in _by_turn(attempts):
            if any(a in chaotic for a in group):
                lines.append(f"    {key}: " + ", ".join(_run_of(run) for run in _runs(group)))
        notes = [n for d in self.drivers for n in d.notes]
        if notes:
            lines.append("  notes: " + "; ".join(notes))
        lines.append(f"  processes seen below the emulators: {self.descendants_seen}; left behind after the final stop: "
                     + ("; ".join(self.orphans) if self.orphans else "none"))
        for p in self.problems:
            lines.append(f"  PROBLEM: {p}")
        return "\n".join(lines)


def _by_turn(attempts: list[Attempt]):
    groups: dict[str, list[Attempt]] = {}
    for a in attempts:
        groups.setdefault(f"{a.session} op {a.op} {a.kind} via {a.via} {a.text!r}", []).append(a)
    return groups.items()


def _runs(group: list[Attempt]) -> list[list[Attempt]]:
    """Consecutive attempts with the same outcome on the same emulator, together."""
    runs: list[list[Attempt]] = []
    for a in group:
        if runs and (runs[-1][-1].outcome, runs[-1][-1].generation) == (a.outcome, a.generation):
            runs[-1].append(a)
        else:
            runs.append([a])
    return runs


def _run_of(run: list[Attempt]) -> str:
    first, last = run[0], run[-1]
    numbers = f"{first.attempt}" if first is last else f"{first.attempt}-{last.attempt}"
    detail = f" ({first.detail[:90]})" if first.outcome not in ("completed", "UNAVAILABLE") else ""
    return f"{numbers}: {first.outcome} on emulator {first.generation}{detail}"


def run(seed: int, db: str, port: int, marker: str, sessions: int = 50, restarts: int = 6,
        threads: int = 3, audio_pace: float = 0.03) -> Report:
    started = time.monotonic()
    scripts = plan(seed, sessions)
    report = Report(seed, scripts)
    # The agent's audio plays at 3% of its length: a bidi turn lasts ~0.3 s, long enough to be cut.
    emulator = Emulator(db, port, "--audio-pace", str(audio_pace))
    emulator.start()
    emulator.lineage.start()
    board = Board()
    monkey = Monkey(emulator, board, random.Random(seed * 7919 + 1), sum(op.turns for s in scripts for op in s.ops), restarts)
    client = ces_nb.connect(APP, endpoint=emulator.address)
    try:
        todo: queue.Queue[Script] = queue.Queue()
        for script in scripts:
            todo.put(script)
        drivers: list[Driver] = []
        lock = threading.Lock()

        def work() -> None:
            while True:
                try:
                    script = todo.get_nowait()
                except queue.Empty:
                    return
                driver = Driver(client, script, emulator, board, monkey)
                with lock:
                    drivers.append(driver)
                driver.run()

        workers = [threading.Thread(target=work, name=f"chaos-driver-{n}", daemon=True) for n in range(threads)]
        monkey.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        board.finished.set()
        monkey.join(RESTART_WAIT_S)
        drivers.sort(key=lambda d: d.session.id)
        report.drivers, report.faults = drivers, monkey.faults
        if monkey.error is not None:
            report.problems.append(f"the emulator did not come back: {monkey.error}")
        if len(monkey.faults) < restarts:
            report.problems.append(f"only {len(monkey.faults)} of {restarts} kills happened before the sessions ended")
        report.problems += [p for d in drivers for p in d.problems]
        if emulator.up.is_set() and not emulator.broken:
            try:
                report.problems += check_store(client, drivers)
            except Exception:
                report.problems.append(f"reading the store back failed:\n{traceback.format_exc()}")
    finally:
        board.aborted.set()
        monkey.join(RESTART_WAIT_S)
        client.close()
        emulator.stop()
    report.orphans = wait_for_no_leftovers(marker, emulator.pids, emulator.lineage.seen)
    report.descendants_seen = len(emulator.lineage.seen)
    report.seconds = time.monotonic() - started
    return report
