"""The SQLite store's one writer: completed turns, written by one thread, many turns per commit.

ADK's DatabaseSessionService writes each event as its own transaction through the async
driver: about five statements, each a hop to the driver's thread, per event, four or five
events per turn, on the event loop. With a hundred sessions at once, those transactions also
raced for SQLite's write lock.

Here the event loop hands a completed turn (a session's new events) to a single writer
thread, which owns one connection. The thread takes every turn waiting, writes them in one
transaction (BEGIN IMMEDIATE: it holds the write lock from its start, so another process
queues on busy_timeout instead of failing), one savepoint per turn, and commits. A turn's
future resolves only after that commit: the client hears the turn completed once it is in
the file (WAL, synchronous=NORMAL: it survives the emulator's kill -9). Readers, on their own
connections, never wait for it (WAL).

The rows are ADK's own: the same tables, columns and type processing (SQLAlchemy Core on
ADK's schema classes), the same optimistic-concurrency check as ADK's append_event (the
stored revision marker must equal the session's, else StaleSessionError), the same state
merge. Turns that touch app: or user: state take ADK's own path (store.TurnBatchingStore).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.events import Event
from google.adk.sessions import Session
from google.adk.sessions import _session_util
from sqlalchemy import create_engine, inspect, select

# Turns per transaction at most: a commit does not wait on an unbounded backlog.
MAX_TURNS_PER_COMMIT = 64


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


def marker_of(update_time: datetime) -> str:
    """ADK's revision marker for a stored update_time (StorageSession.get_update_marker)."""
    if update_time.tzinfo is not None:
        update_time = update_time.astimezone(timezone.utc)
    return update_time.isoformat(timespec="microseconds")


class SqliteWriter:
    def __init__(self, path: str, schema, naive_datetimes: bool, configure_engine):
        """`schema`: ADK's schema classes for this database; `configure_engine(sync_engine)`
        installs the store's pragmas and BEGIN IMMEDIATE (store.py)."""
        self.engine = create_engine(f"sqlite:///{path}")
        configure_engine(self.engine)
        self.sessions = schema.StorageSession.__table__
        self.events_table = schema.StorageEvent.__table__
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
        update_time = datetime.fromtimestamp(events[-1].timestamp, timezone.utc)
        if self.naive:
            update_time = update_time.replace(tzinfo=None)
        delta: dict[str, Any] = {}
        for event in events:
            if event.actions and event.actions.state_delta:
                delta.update(_session_util.extract_json_safe_state_delta(event.actions.state_delta)["session"])
        turn = _Turn(session.app_name, session.user_id, session.id, session._storage_update_marker,
                     events, delta, update_time)
        self._queue.put(turn)
        marker = await asyncio.wrap_future(turn.done)
        session._storage_update_marker = marker
        session.last_update_time = events[-1].timestamp

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.engine.dispose()

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
        table = self.sessions
        key = (table.c.app_name == turn.app_name, table.c.user_id == turn.user_id, table.c.id == turn.session_id)
        row = connection.execute(select(table.c.state, table.c.update_time).where(*key)).one_or_none()
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
        connection.execute(self.events_table.insert(), rows)
        state = dict(row.state or {})
        state.update(turn.session_delta)
        connection.execute(table.update().where(*key).values(state=state, update_time=turn.update_time))
        stored_time = connection.execute(select(table.c.update_time).where(*key)).scalar_one()
        return marker_of(stored_time)
