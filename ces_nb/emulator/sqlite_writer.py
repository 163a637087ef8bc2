"""The SQLite store's writer: a completed turn, written in one transaction before the client hears
of it.

ADK's DatabaseSessionService writes each event as its own transaction through the async
driver: about five statements, each a hop to the driver's thread, per event, four or five
events per turn. With a hundred sessions at once, those transactions also raced for SQLite's
write lock, and failed with "database is locked".

Here a completed turn (a session's new events) is written at once, on the event loop, in one
short transaction: WAL with synchronous=NORMAL makes a commit an append to the log, well under
a millisecond, and the loop is the one writer of this process, so it never waits for another.
Should the write lock be held elsewhere (a sibling `--workers` process, or ADK's own engine
creating a session), the loop does not wait: the turn goes to a writer thread that waits on
busy_timeout (BEGIN IMMEDIATE), takes every turn queued behind it into one transaction (one
savepoint per turn) and commits. So does a big turn (OFF_LOOP_JSON_CHARS of state and contents,
which each turn encodes again): on the loop it would hold every other session's turn while it
encodes. (A thread for every write would cost more than the write:
under load it waits for the GIL on every statement.) Either way the client hears the turn
completed once it is in the file, so it survives the emulator's kill -9. Readers, on their own
connections, never wait for a writer (WAL).

The rows are ADK's own: the same tables, columns and type processing (SQLAlchemy Core on
ADK's schema classes), the same optimistic-concurrency check as ADK's append_event (the
stored revision marker must equal the session's, else StaleSessionError), the same state
merge. Turns that touch app: or user: state take ADK's own path (batching_store.TurnBatchingStore).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.adk.errors import StaleSessionError
from google.adk.events import Event
from google.adk.sessions import Session
from google.adk.sessions import _session_util
from sqlalchemy import bindparam, create_engine, event, inspect, select
from sqlalchemy.exc import OperationalError

from .fair_share import elsewhere

# Turns per transaction at most: a commit does not wait on an unbounded backlog.
MAX_TURNS_PER_COMMIT = 64
# A turn whose rows hold about this much JSON or more (its events and the session's state, which
# each turn rewrites) goes to the writer thread: encoding 256 KiB of variables holds the loop, and
# every other session's turn on it, for ~20 ms; on the thread, the loop goes on between its GIL slices.
OFF_LOOP_JSON_CHARS = 32 * 1024


@dataclass
class _Turn:
    app_name: str
    user_id: str
    session_id: str
    marker: str
    events: list[Event]
    session_delta: dict[str, Any]
    update_time: datetime
    done: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class _LockTaken(Exception):
    """SQLite's write lock is held elsewhere: the writer thread waits for it instead of the loop."""


def _no_wait(connection, _record) -> None:
    connection.execute("PRAGMA busy_timeout=0")


def marker_of(update_time: datetime) -> str:
    """ADK's revision marker for a stored update_time (StorageSession.get_update_marker)."""
    if update_time.tzinfo is not None:
        update_time = update_time.astimezone(timezone.utc)
    return update_time.isoformat(timespec="microseconds")


def turn_changes(events: list[Event], naive_datetimes: bool) -> tuple[datetime, dict[str, Any]]:
    """What a turn's events change on the session's row: its update_time (naive where the
    database's columns are) and the merged session-scoped state delta, as ADK computes them."""
    update_time = datetime.fromtimestamp(events[-1].timestamp, timezone.utc)
    if naive_datetimes:
        update_time = update_time.replace(tzinfo=None)
    delta: dict[str, Any] = {}
    for event in events:
        if event.actions and event.actions.state_delta:
            delta.update(_session_util.extract_json_safe_state_delta(event.actions.state_delta)["session"])
    return update_time, delta


def json_chars(states: list[dict], events: list[Event], limit: int) -> int:
    """About how many characters of JSON the states and the events' contents take, counted up to
    `limit` (then it stops): the texts and keys, and a few for every other value."""
    total = 0
    pending: list[Any] = list(states)
    for ev in events:  # not `event`: that is sqlalchemy's, imported above
        for part in (ev.content.parts or []) if ev.content else []:
            pending += [part.text, part.function_call and part.function_call.args, part.function_response and part.function_response.response,
                        part.inline_data and part.inline_data.data]
    while pending and total < limit:
        value = pending.pop()
        if isinstance(value, (str, bytes)):
            total += len(value) + 2
        elif isinstance(value, dict):
            total += 2
            for key, item in value.items():
                total += len(key) + 4
                pending.append(item)
                if total >= limit:
                    break
        elif isinstance(value, (list, tuple)):
            total += 2 + len(value)
            pending += value
        else:
            total += 8
    return total


class SqliteWriter:
    def __init__(self, path: str, schema, naive_datetimes: bool, configure_engine):
        """`schema`: ADK's schema classes for this database; `configure_engine(sync_engine)`
        installs the store's pragmas and BEGIN IMMEDIATE (store.py)."""
        self.engine = create_engine(f"sqlite:///{path}")  # the writer thread's
        configure_engine(self.engine)
        # The event loop's: one connection, which never waits for the write lock.
        self.inline_engine = create_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0)
        configure_engine(self.inline_engine)
        event.listen(self.inline_engine, "connect", _no_wait)
        self.sessions = schema.StorageSession.__table__
        # With `--workers`, every turn asks for its session's revision: through SQLAlchemy that is
        # about 0.34 ms of the loop, through the driver about 10 us. The loop's own connection for it
        # (autocommit: each read sees the latest commit; WAL: it never waits for a writer), and the
        # column's own type to read the stored time, as SQLAlchemy would.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout=0")
        table = self.sessions
        self._revision_sql = (f'SELECT "{table.c.update_time.name}" FROM "{table.name}" WHERE "{table.c.app_name.name}" = ? '
                              f'AND "{table.c.user_id.name}" = ? AND "{table.c.id.name}" = ?')
        dialect = self.inline_engine.dialect
        self._stored_time = table.c.update_time.type.dialect_impl(dialect).result_processor(dialect, None) or (lambda value: value)
        # A turn's statements, built once with bound parameters: SQLAlchemy then finds each one's
        # compiled form by a cache key it keeps, instead of building the clauses and their keys per turn.
        key = (table.c.app_name == bindparam("k_app"), table.c.user_id == bindparam("k_user"), table.c.id == bindparam("k_id"))
        self._read_row = select(table.c.state, table.c.update_time).where(*key)
        self._read_time = select(table.c.update_time).where(*key)
        self._insert_events = schema.StorageEvent.__table__.insert()
        self._update_row = table.update().where(*key).values(state=bindparam("v_state"), update_time=bindparam("v_time"))
        self.event_class = schema.StorageEvent
        # (ORM attribute, column name) of each event column
        self.event_columns = [(a.key, a.columns[0].name) for a in inspect(schema.StorageEvent).column_attrs]
        self.naive = naive_datetimes
        self._queue: queue.SimpleQueue[_Turn | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ces-nb store writer", daemon=True)
        self._thread.start()

    async def append_turn(self, session: Session, events: list[Event]) -> None:
        """Store `events` (already trimmed of temp: state) for `session`, after its last stored
        revision; then the session's revision is the new one. All of them, or none."""
        update_time, delta = turn_changes(events, self.naive)
        turn = _Turn(session.app_name, session.user_id, session.id, session._storage_update_marker,
                     events, delta, update_time)
        if json_chars([session.state, delta], events, OFF_LOOP_JSON_CHARS) >= OFF_LOOP_JSON_CHARS:
            marker = await self._write_on_thread(turn)
        else:
            try:
                marker = self._write_inline(turn)
            except _LockTaken:
                marker = await self._write_on_thread(turn)
        session._storage_update_marker = marker
        session.last_update_time = events[-1].timestamp

    async def _write_on_thread(self, turn: _Turn) -> str:
        self._queue.put(turn)
        async with elsewhere():
            return await asyncio.wrap_future(turn.done)

    def _write_inline(self, turn: _Turn) -> str:
        try:
            with self.inline_engine.connect() as connection:
                with connection.begin():
                    return self._write_turn(connection, turn)
        except OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise _LockTaken from None
            raise

    def revision(self, session: Session) -> str | None:
        """The stored revision marker of `session` (None when it is gone), read on the loop."""
        try:
            # fetchall: the statement runs to its end, so no read transaction stays open (it would hold
            # back the WAL's checkpoints).
            rows = self._reader.execute(self._revision_sql, (session.app_name, session.user_id, session.id)).fetchall()
        except sqlite3.OperationalError:  # busy (a WAL recovery, say): SQLAlchemy's read says what is wrong
            return self._revision_through_sqlalchemy(session)
        return marker_of(self._stored_time(rows[0][0])) if rows else None

    def _revision_through_sqlalchemy(self, session: Session) -> str | None:
        with self.inline_engine.connect() as connection:
            connection.execution_options(read_only=True)  # a deferred BEGIN, no write lock (sqlite_setup.sqlite_begin)
            with connection.begin():
                stored = connection.execute(self._read_time, {"k_app": session.app_name, "k_user": session.user_id,
                                                              "k_id": session.id}).scalar_one_or_none()
        return None if stored is None else marker_of(stored)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._reader.close()
        self.engine.dispose()
        self.inline_engine.dispose()

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            turn = self._queue.get()
            if turn is None:
                return
            batch = [turn]
            while len(batch) < MAX_TURNS_PER_COMMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._write(batch)

    def _write(self, batch: list[_Turn]) -> None:
        results: list[tuple[_Turn, Any]] = []
        try:
            with self.engine.connect() as connection:
                with connection.begin():
                    for turn in batch:
                        savepoint = connection.begin_nested()
                        try:
                            marker = self._write_turn(connection, turn)
                            savepoint.commit()
                            results.append((turn, marker))
                        except Exception as exc:  # this turn only: the others still commit
                            savepoint.rollback()
                            results.append((turn, exc))
        except Exception as exc:  # the commit itself failed: none of them is stored
            results = [(turn, exc) for turn in batch]
        for turn, outcome in results:
            if isinstance(outcome, BaseException):
                turn.done.set_exception(outcome)
            else:
                turn.done.set_result(outcome)

    def _write_turn(self, connection, turn: _Turn) -> str:
        key = {"k_app": turn.app_name, "k_user": turn.user_id, "k_id": turn.session_id}
        row = connection.execute(self._read_row, key).one_or_none()
        if row is None:
            from google.adk.errors.session_not_found_error import SessionNotFoundError

            raise SessionNotFoundError(f"Session {turn.session_id} not found.")
        if marker_of(row.update_time) != turn.marker:
            raise StaleSessionError(
                "The session was changed in the store since it was read (another emulator worker, or "
                "a client of the same store, wrote to it); read it again and retry"
            )
        session_ref = Session(app_name=turn.app_name, user_id=turn.user_id, id=turn.session_id)
        rows = []
        for event in turn.events:
            stored = self.event_class.from_event(session_ref, event)
            rows.append({column: getattr(stored, attr) for attr, column in self.event_columns})
        connection.execute(self._insert_events, rows)
        state = dict(row.state or {})
        state.update(turn.session_delta)
        connection.execute(self._update_row, {**key, "v_state": state, "v_time": turn.update_time})
        stored_time = connection.execute(self._read_time, key).scalar_one()
        return marker_of(stored_time)
