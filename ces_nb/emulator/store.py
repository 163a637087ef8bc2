"""The session store: where conversations live, checked and held before the emulator serves.

* `:memory:` keeps sessions in memory; anything else is a SQLAlchemy URL or a SQLite file path.
* A SQLite file is held by one emulator at a time (an advisory lock beside it, released by the
  kernel even on kill -9): two writers on one file would duplicate turn indexes.
* The file and its folder are created private (0600 / 0700): conversations are user data.
* A corrupt, unreadable or read-only store stops start-up with the file's name and a fix,
  instead of a server that reports SERVING and fails every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from google.adk.events import Event
from google.adk.sessions import BaseSessionService, DatabaseSessionService, InMemorySessionService, Session
from sqlalchemy import event


class StoreError(Exception):
    """The store can't be used; the message names it and says what to do."""


def sqlite_file(db: str) -> str | None:
    """The file behind a SQLite store, or None for memory and other databases."""
    if db == ":memory:":
        return None
    if "://" not in db:
        return db
    scheme, _, rest = db.partition("://")
    if not scheme.startswith("sqlite"):
        return None
    path = rest[1:] if rest.startswith("/") else rest  # sqlite:///relative, sqlite:////absolute
    return None if path in ("", ":memory:") else path.split("?", 1)[0]


def session_service_for(db: str) -> BaseSessionService:
    if db == ":memory:":
        return InMemorySessionService()
    if "://" not in db:
        db = f"sqlite:///{db}"
    # ADK's store is async: plain sqlite:// URLs get the aiosqlite driver.
    if db.startswith("sqlite://"):
        db = "sqlite+aiosqlite://" + db[len("sqlite://"):]
    service = TurnBatchingStore(db_url=db)
    if service.db_engine.dialect.name == "sqlite":
        event.listen(service.db_engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(service.db_engine.sync_engine, "begin", _sqlite_begin)
    return service


def _sqlite_pragmas(connection, _record) -> None:
    """WAL: readers never wait for the writer, and a commit appends to the log instead of
    rewriting pages with a journal. synchronous=NORMAL syncs at checkpoints, not at every
    commit: a committed turn is in the file (the OS's page cache) the moment the client
    hears of it, so it survives the emulator's kill -9; only a machine crash can lose the
    last ones. busy_timeout: writers queue instead of failing with "database is locked"."""
    # SQLAlchemy emits BEGIN itself (_sqlite_begin), not the driver.
    connection.isolation_level = None
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection) -> None:
    """A writing transaction takes SQLite's write lock when it begins (BEGIN IMMEDIATE), so it
    queues on busy_timeout for another writer. A deferred one reads first and upgrades later,
    and an upgrade after another writer's commit fails at once with "database is locked": the
    1-6 errors per run of 100 concurrent sessions. Reads (ADK's read-only engine) stay deferred
    and, with WAL, never wait for a writer."""
    read_only = connection.get_execution_options().get("read_only", False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _configure_sqlite_engine(sync_engine) -> None:
    """ADK's foreign keys, and this store's pragmas and BEGIN IMMEDIATE, on a synchronous engine."""
    from google.adk.sessions.database_session_service import _set_sqlite_pragma

    event.listen(sync_engine, "connect", _set_sqlite_pragma)
    event.listen(sync_engine, "connect", _sqlite_pragmas)
    event.listen(sync_engine, "begin", _sqlite_begin)


def _touches_shared_state(events: list[Event]) -> bool:
    """Whether any event changes app: or user: state (other rows than the session's)."""
    return any(k.startswith(("app:", "user:")) for e in events if e.actions and e.actions.state_delta for k in e.actions.state_delta)


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
            for event in events:
                self._apply_temp_state(session, event)
                trimmed.append(self._trim_temp_delta_state(event))
            await writer.append_turn(session, trimmed)  # stored, committed
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
                                                 _configure_sqlite_engine)
        return self._turn_writer

    async def close(self) -> None:
        if self._turn_writer is not None:
            await asyncio.to_thread(self._turn_writer.close)
            self._turn_writer = None
        await super().close()

    async def revision(self, session: Session) -> Any:
        """The stored session's revision marker (None when it is gone): a cached session is
        current when this equals its own `_storage_update_marker`."""
        schema = self._get_schema_classes()
        async with self._rollback_on_exception_session(read_only=True) as sql_session:
            row = await sql_session.get(schema.StorageSession, (session.app_name, session.user_id, session.id))
            return None if row is None else row.get_update_marker()


async def open_store(db: str) -> BaseSessionService:
    """The session service for `db`, after one read: a store that can't serve (a missing driver,
    an unreachable server, a foreign schema) stops start-up here, not at the first turn."""
    try:
        store = session_service_for(db)
        await store.list_sessions(app_name="ces-nb-store-check", user_id="ces")
    except Exception as exc:
        detail = str(exc).replace(db, display_url(db))[:300]
        raise StoreError(
            f"the store {display_url(db)} can't be read ({type(exc).__name__}: {detail}); check its URL, that it is "
            f"reachable and that its driver is installed, or start with an empty one (--db NEW.db, or --db :memory:)"
        ) from None
    return store


def display_url(db: str) -> str:
    """The store as it may be printed: a database URL's password is masked."""
    if "://" not in db:
        return db
    try:
        from sqlalchemy.engine import make_url

        return make_url(db).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy knows: print nothing of it past the scheme
        return db.split("://", 1)[0] + "://…"


class StoreLock:
    """An exclusive advisory lock on `<file>.lock`, holding the owner's pid and command line."""

    def __init__(self, path: str):
        self.path = f"{path}.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"{path} is in use by another emulator ({holder}). Two emulators on one file would "
                f"corrupt its conversations: stop that one, or give this one its own store "
                f"(--db OTHER.db, or --db :memory:)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {_command_line()}".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _command_line() -> str:
    try:
        return Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "ces-nb emulator"


def open_sqlite_file(path: str) -> StoreLock:
    """Create (privately) or check the SQLite file at `path`, and hold it for this process."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder {folder} for the store {path}: {exc.strerror}; "
                         f"pick a writable place with --db PATH, or --db :memory:") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"the folder {folder} of the store {path} is not writable (SQLite needs it for its journal); "
                         f"fix its permissions, or pick another place with --db PATH")
    if os.path.isdir(path):
        raise StoreError(f"the store {path} is a folder; pass a file, e.g. --db {os.path.join(path, 'emulator.db')}")
    lock = StoreLock(path)
    try:
        if not os.path.exists(path):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))  # SQLite's -wal/-shm copy this mode
        _check_sqlite(path)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_sqlite(path: str) -> None:
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"the store {path} is not readable and writable by this user; "
                         f"fix it with chmod 600 {path}, or pick another file with --db PATH")
    try:
        connection = sqlite3.connect(path, timeout=5)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            connection.execute("BEGIN IMMEDIATE")  # proves the file takes writes
            connection.rollback()
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            raise StoreError(f"the store {path} can't be opened ({exc}); check the file, or pick another with --db PATH") from None
        raise StoreError(f"the store {path} takes no writes ({exc}); make it writable (chmod 600 {path}) "
                         f"or pick another file with --db PATH") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"the store {path} is damaged or not a SQLite database ({exc}); move it aside "
            f"(mv {path} {path}.broken) to start with an empty store, or pick another with --db PATH"
        ) from None
