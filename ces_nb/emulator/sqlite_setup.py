"""How this emulator opens a SQLite store: WAL and its pragmas on every connection, and
BEGIN IMMEDIATE for writers (ADK's async engine and the turn writer's own engine alike)."""

from __future__ import annotations


def sqlite_pragmas(connection, _record) -> None:
    """WAL: readers never wait for the writer, and a commit appends to the log instead of
    rewriting pages with a journal. synchronous=NORMAL syncs at checkpoints, not at every
    commit: a committed turn is in the file (the OS's page cache) the moment the client
    hears of it, so it survives the emulator's kill -9; only a machine crash can lose the
    last ones. busy_timeout: writers queue instead of failing with "database is locked"."""
    # SQLAlchemy emits BEGIN itself (sqlite_begin), not the driver.
    connection.isolation_level = None
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def sqlite_begin(connection) -> None:
    """A writing transaction takes SQLite's write lock when it begins (BEGIN IMMEDIATE), so it
    queues on busy_timeout for another writer. A deferred one reads first and upgrades later,
    and an upgrade after another writer's commit fails at once with "database is locked": the
    1-6 errors per run of 100 concurrent sessions. Reads (ADK's read-only engine) stay deferred
    and, with WAL, never wait for a writer."""
    read_only = connection.get_execution_options().get("read_only", False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def configure_sqlite_engine(sync_engine) -> None:
    """ADK's foreign keys, and this store's pragmas and BEGIN IMMEDIATE, on a synchronous engine."""
    from google.adk.sessions.database_session_service import _set_sqlite_pragma
    from sqlalchemy import event

    event.listen(sync_engine, "connect", _set_sqlite_pragma)
    event.listen(sync_engine, "connect", sqlite_pragmas)
    event.listen(sync_engine, "begin", sqlite_begin)
