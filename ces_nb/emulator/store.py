"""The session store: where conversations live, checked and held before the emulator serves.

* `:memory:` keeps sessions in memory; anything else is a SQLAlchemy URL or a SQLite file path.
* `postgresql://…` (or `postgres://…`) is PostgreSQL through SQLAlchemy's async psycopg 3
  driver (`pip install 'ces_nb[postgres]'`): the store past one machine. Several emulators, and
  their `--workers`, share one database: no file lock, each turn's revision checked against the
  stored one (ADK's SELECT … FOR UPDATE and update marker), the tables created under an
  advisory lock so emulators starting together don't race.
* A SQLite file is held by one emulator at a time (an advisory lock beside it, released by the
  kernel even on kill -9): two writers on one file would duplicate turn indexes.
* The file and its folder are created private (0600 / 0700): conversations are user data.
* A corrupt, unreadable or read-only store stops start-up with the file's name and a fix,
  instead of a server that reports SERVING and fails every call.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from .sqlite_setup import sqlite_begin, sqlite_pragmas

if TYPE_CHECKING:  # ADK and SQLAlchemy load when a store opens: `--workers`' supervisor never needs them
    from google.adk.sessions import BaseSessionService


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


def is_server_database(db: str) -> bool:
    """A database that other processes, on other machines too, may share (PostgreSQL, MySQL, ...)."""
    return db != ":memory:" and "://" in db and not db.split("://", 1)[0].startswith("sqlite")


def is_postgres(db: str) -> bool:
    return db.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres") if "://" in db else False


def async_url(db: str) -> str:
    """`db` with an async driver SQLAlchemy can hand ADK: aiosqlite for SQLite, psycopg 3 for a
    PostgreSQL URL that names none (SQLAlchemy's default there, psycopg2, is synchronous)."""
    if "://" not in db:
        db = f"sqlite:///{db}"
    scheme, _, rest = db.partition("://")
    if scheme == "sqlite":
        return "sqlite+aiosqlite://" + rest
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + rest
    return db


# Start-up gives up on a PostgreSQL server that does not answer after this long (libpq's default
# is to wait for ever on a host that drops packets); a URL's own ?connect_timeout= wins.
PG_CONNECT_TIMEOUT_S = 10


def default_db_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "ces_nb", "emulator.db")  # open_sqlite_file creates it, privately


def session_service_for(db: str) -> "BaseSessionService":
    from sqlalchemy import event

    from .batching_store import TurnBatchingStore

    if db == ":memory:":
        from google.adk.sessions import InMemorySessionService

        return InMemorySessionService()
    # ADK's store is async: plain sqlite:// URLs get aiosqlite, postgresql:// ones psycopg 3.
    url = async_url(db)
    engine_args = {}
    if url.startswith("postgresql+psycopg") and "connect_timeout=" not in url:
        engine_args["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if is_server_database(url):
        engine_args["pool_pre_ping"] = True  # a server restarted under a long-running emulator
    service = TurnBatchingStore(db_url=url, **engine_args)
    if service.db_engine.dialect.name == "sqlite":
        event.listen(service.db_engine.sync_engine, "connect", sqlite_pragmas)
        event.listen(service.db_engine.sync_engine, "begin", sqlite_begin)
    return service


async def open_store(db: str) -> "BaseSessionService":
    """The session service for `db`, after one read: a store that can't serve (a missing driver,
    an unreachable server, a foreign schema) stops start-up here, not at the first turn."""
    store = None
    try:
        store = session_service_for(db)
        path = sqlite_file(db)
        # `--workers` open the same new file at once: ADK creates the tables on this first
        # read, and two processes creating them together would race. One at a time.
        if path:
            with _exclusive(f"{path}.schema.lock"):
                await store.list_sessions(app_name="ces-nb-store-check", user_id="ces")
        elif is_postgres(db):
            await _create_tables_one_at_a_time(store)
        else:
            await store.list_sessions(app_name="ces-nb-store-check", user_id="ces")
    except Exception as exc:
        if store is not None and hasattr(store, "close"):
            with contextlib.suppress(Exception):
                await store.close()
        raise StoreError(_unreadable(db, exc)) from None
    return store


def check_store(db: str) -> None:
    """Open `db` once and close it: raises StoreError as open_store does. The `--workers`
    supervisor checks a database server so that a bad URL is one message, not one per worker."""
    import asyncio

    async def probe() -> None:
        store = await open_store(db)
        if hasattr(store, "close"):
            await store.close()

    asyncio.run(probe())


async def _create_tables_one_at_a_time(store) -> None:
    """ADK's tables and the EvaluationService's, created under a PostgreSQL advisory lock:
    emulators (and `--workers`) starting on one new database at once would otherwise race in
    CREATE TABLE. The lock is per connection and released when it closes."""
    import sqlalchemy as sa

    from .evaluation_store import create_tables

    async with store.db_engine.connect() as connection:
        await connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('ces_nb store schema'))"))
        await connection.commit()
        try:
            await store.list_sessions(app_name="ces-nb-store-check", user_id="ces")  # ADK creates its tables
            await create_tables(store.db_engine)
        finally:
            await connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('ces_nb store schema'))"))
            await connection.commit()


def _unreadable(db: str, exc: Exception) -> str:
    detail = _mask(db, str(exc))[:300]
    shown = display_url(db)
    if is_postgres(db):
        if isinstance(exc, ModuleNotFoundError) or "psycopg" in detail and "No module" in detail:
            fix = ("install its driver: pip install 'ces_nb[postgres]' (psycopg 3, for postgresql://), or pip install "
                   "asyncpg for postgresql+asyncpg://")
        else:
            host = _url_part(db, "host") or "localhost"
            port = _url_part(db, "port") or 5432
            name = _url_part(db, "database") or "(none given)"
            fix = (f"check that PostgreSQL runs and takes connections at {host}:{port} (pg_isready -h {host} -p {port}), "
                   f"that the database {name} exists (createdb -h {host} -p {port} {name}) and that the user and "
                   f"password are right (a password can come from PGPASSWORD or ~/.pgpass instead of the URL); "
                   f"or use a local store (--db PATH.db, or --db :memory:)")
        return f"the store {shown} can't be read ({type(exc).__name__}: {detail}); {fix}"
    return (f"the store {shown} can't be read ({type(exc).__name__}: {detail}); check its URL, that it is "
            f"reachable and that its driver is installed, or start with an empty one (--db NEW.db, or --db :memory:)")


def _url_part(db: str, part: str):
    try:
        from sqlalchemy.engine import make_url

        return getattr(make_url(db), part)
    except Exception:
        return None


def _mask(db: str, text: str) -> str:
    """`text` with `db`'s password, and `db` itself in any driver's spelling, masked."""
    for url in (db, async_url(db)):
        text = text.replace(url, display_url(db))
    password = _url_part(db, "password")
    return text.replace(password, "***") if password else text


@contextlib.contextmanager
def _exclusive(lock_path: str):
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
