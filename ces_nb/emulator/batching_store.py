"""ADK's DatabaseSessionService with a completed turn written whole (see TurnStore.commit)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any

from google.adk.events import Event
from google.adk.sessions import DatabaseSessionService, Session

from .fair_share import checkpoint
from .sqlite_setup import configure_sqlite_engine


class _UncommittedSession:
    """An SQLAlchemy session whose commit() only flushes: ADK's append_event commits each event;
    inside a batch the batch commits once, at its end."""

    def __init__(self, session):
        self._session = session

    async def commit(self) -> None:
        await self._session.flush()

    def __getattr__(self, name):
        return getattr(self._session, name)


class TurnBatchingStore(DatabaseSessionService):
    """ADK's DatabaseSessionService, writing a turn's events in one transaction, one writer at a
    time in this process.

    TurnStore.commit hands over a completed turn whole (`append_events`): ADK writes each event
    as its own transaction, each a round of reads, writes and a commit; here they share one.
    Each event still goes through ADK's own append_event (its stale-session check, state
    deltas, schema), which commits into the batch. One writer at a time keeps this process's
    writers from queueing inside SQLite; other processes (`--workers`) queue on busy_timeout.
    Reads never wait for either."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock = asyncio.Lock()
        self._turn_writer = None  # sqlite_writer.SqliteWriter, for a SQLite file, once the tables exist
        self._pg_writer = None  # postgres_store.PostgresTurnWriter, for PostgreSQL
        self._batch: contextvars.ContextVar[_UncommittedSession | None] = contextvars.ContextVar("ces_store_batch", default=None)

    @contextlib.asynccontextmanager
    async def _rollback_on_exception_session(self, *, read_only: bool = False):
        batch = self._batch.get()
        if batch is not None and not read_only:
            yield batch  # the batch rolls back, and commits, as a whole
            return
        if read_only:
            async with super()._rollback_on_exception_session(read_only=True) as sql_session:
                yield sql_session
            return
        async with self._write_lock:
            async with super()._rollback_on_exception_session() as sql_session:
                yield sql_session

    async def append_events(self, session: Session, events: list[Event]) -> None:
        """Append `events` to `session` in one transaction: all of them are stored, or none."""
        events = [e for e in events if not e.partial]
        if not events:
            return
        await self.prepare_tables()
        writer = self._sqlite_writer()
        if writer is not None and session._storage_update_marker is not None and not _touches_shared_state(events):
            trimmed = []
            for event in events:  # a pass over the state per event: 2 300 variables take ~1 ms each
                self._apply_temp_state(session, event)
                trimmed.append(self._trim_temp_delta_state(event))
                await checkpoint()
            # One writer in this process: ADK's own writes (a session created) hold SQLite's write
            # lock across awaits, so a turn waits for them here, in turn, not on busy_timeout.
            async with self._write_lock:
                await writer.append_turn(session, trimmed)  # stored, committed
            for event in trimmed:
                self._commit_event_to_session(session, event)
                await checkpoint(cancellable=False)  # stored: a cancel now must not report it failed
            return
        pg = self._postgres_writer()
        if pg is not None and session._storage_update_marker is not None and not _touches_shared_state(events):
            trimmed = []
            for event in events:
                self._apply_temp_state(session, event)
                trimmed.append(self._trim_temp_delta_state(event))
            # No lock in this process: PostgreSQL locks the session's row (postgres_store.py)
            await pg.append_turn(session, trimmed)
            for event in trimmed:
                self._commit_event_to_session(session, event)
            return
        async with self._write_lock:
            async with self.database_session_factory() as sql_session:
                token = self._batch.set(_UncommittedSession(sql_session))
                try:
                    for event in events:
                        await self.append_event(session, event)
                    await sql_session.commit()
                except BaseException:
                    await sql_session.rollback()
                    raise
                finally:
                    self._batch.reset(token)

    def _sqlite_writer(self):
        if self._turn_writer is None and self.db_engine.dialect.name == "sqlite":
            path = self.db_engine.url.database
            if path and path != ":memory:":
                from .sqlite_writer import SqliteWriter

                self._turn_writer = SqliteWriter(path, self._get_schema_classes(), self._uses_naive_datetime(),
                                                 configure_sqlite_engine)
        return self._turn_writer

    def _postgres_writer(self):
        if self._pg_writer is None and self.db_engine.dialect.name == "postgresql":
            from .postgres_store import PostgresTurnWriter

            self._pg_writer = PostgresTurnWriter(self.db_engine, self._get_schema_classes(), self._uses_naive_datetime())
        return self._pg_writer

    async def close(self) -> None:
        if self._turn_writer is not None:
            await asyncio.to_thread(self._turn_writer.close)
            self._turn_writer = None
        await super().close()

    async def revision(self, session: Session) -> Any:
        """The stored session's revision marker (None when it is gone): a cached session is
        current when this equals its own `_storage_update_marker`."""
        writer = self._sqlite_writer()
        if writer is not None:  # one indexed read on the loop's own connection: WAL never makes it wait
            return writer.revision(session)
        pg = self._postgres_writer()
        if pg is not None:
            return await pg.revision(session)
        schema = self._get_schema_classes()
        async with self._rollback_on_exception_session(read_only=True) as sql_session:
            row = await sql_session.get(schema.StorageSession, (session.app_name, session.user_id, session.id))
            return None if row is None else row.get_update_marker()




def _touches_shared_state(events: list[Event]) -> bool:
    """Whether any event changes app: or user: state (other rows than the session's)."""
    return any(k.startswith(("app:", "user:")) for e in events if e.actions and e.actions.state_delta for k in e.actions.state_delta)
