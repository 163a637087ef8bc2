"""The session store: where conversations live, checked and held before the emulator serves.

* `:memory:` keeps sessions in memory; anything else is a SQLAlchemy URL or a SQLite file path.
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


def default_db_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "ces_nb", "emulator.db")  # open_sqlite_file creates it, privately


def session_service_for(db: str) -> "BaseSessionService":
    from sqlalchemy import event

    from .batching_store import TurnBatchingStore

    if db == ":memory:":
        from google.adk.sessions import InMemorySessionService

        return InMemorySessionService()
    if "://" not in db:
        db = f"sqlite:///{db}"
    # ADK's store is async: plain sqlite:// URLs get the aiosqlite driver.
    if db.startswith("sqlite://"):
        db = "sqlite+aiosqlite://" + db[len("sqlite://"):]
    service = TurnBatchingStore(db_url=db)
    if service.db_engine.dialect.name == "sqlite":
        event.listen(service.db_engine.sync_engine, "connect", sqlite_pragmas)
        event.listen(service.db_engine.sync_engine, "begin", sqlite_begin)
    return service


async def open_store(db: str) -> "BaseSessionService":
    """The session service for `db`, after one read: a store that can't serve (a missing driver,
    an unreachable server, a foreign schema) stops start-up here, not at the first turn."""
    try:
        store = session_service_for(db)
        path = sqlite_file(db)
        # `--workers` open the same new file at once: ADK creates the tables on this first
        # read, and two processes creating them together would race. One at a time.
        with _exclusive(f"{path}.schema.lock") if path else contextlib.nullcontext():
            await store.list_sessions(app_name="ces-nb-store-check", user_id="ces")
    except Exception as exc:
        detail = str(exc).replace(db, display_url(db))[:300]
        raise StoreError(
            f"the store {display_url(db)} can't be read ({type(exc).__name__}: {detail}); check its URL, that it is "
            f"reachable and that its driver is installed, or start with an empty one (--db NEW.db, or --db :memory:)"
        ) from None
    return store


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
