"""The PostgreSQL store's turn writer: a completed turn in one transaction of four statements.

ADK's append_event writes each event as its own transaction (about five statements, each a
round trip to the server, and four or five events a turn). Here, as sqlite_writer does for a
SQLite file, a turn is written at once: the session's row read and locked (SELECT … FOR
UPDATE, so another emulator's writer to the same session waits for this commit), its
revision marker checked against the session's (else StaleSessionError, as ADK's own check:
the emulator runs the turn again on the stored session), the events inserted in one
statement, the state and update_time updated, and the new marker read back. Rows, columns and
type processing are ADK's own (SQLAlchemy Core on ADK's schema classes). Writers to different
sessions don't wait for each other: PostgreSQL locks rows, not the database.
"""

from __future__ import annotations

from google.adk.errors import StaleSessionError
from google.adk.events import Event
from google.adk.sessions import Session
from sqlalchemy import inspect, select

from .sqlite_writer import marker_of, turn_changes


class PostgresTurnWriter:
    def __init__(self, engine, schema, naive_datetimes: bool):
        self.engine = engine  # ADK's async engine
        self.sessions = schema.StorageSession.__table__
        self.events_table = schema.StorageEvent.__table__
        self.event_class = schema.StorageEvent
        self.event_columns = [(a.key, a.columns[0].name) for a in inspect(schema.StorageEvent).column_attrs]
        self.naive = naive_datetimes

    async def append_turn(self, session: Session, events: list[Event]) -> None:
        """Store `events` (already trimmed of temp: state) after the session's stored revision;
        then the session's revision is the new one. All of them, or none."""
        update_time, delta = turn_changes(events, self.naive)
        table = self.sessions
        key = (table.c.app_name == session.app_name, table.c.user_id == session.user_id, table.c.id == session.id)
        async with self.engine.begin() as connection:
            row = (await connection.execute(select(table.c.state, table.c.update_time).where(*key).with_for_update())).one_or_none()
            if row is None:
                from google.adk.errors.session_not_found_error import SessionNotFoundError

                raise SessionNotFoundError(f"Session {session.id} not found.")
            if marker_of(row.update_time) != session._storage_update_marker:
                raise StaleSessionError(
                    "The session was changed in the store since it was read (another emulator, or a "
                    "worker, sharing this database wrote to it); read it again and retry")
            session_ref = Session(app_name=session.app_name, user_id=session.user_id, id=session.id)
            rows = []
            for event in events:
                stored = self.event_class.from_event(session_ref, event)
                rows.append({column: getattr(stored, attr) for attr, column in self.event_columns})
            await connection.execute(self.events_table.insert(), rows)
            state = dict(row.state or {})
            state.update(delta)
            stored_time = (await connection.execute(
                table.update().where(*key).values(state=state, update_time=update_time)
                .returning(table.c.update_time))).scalar_one()
        session._storage_update_marker = marker_of(stored_time)
        session.last_update_time = events[-1].timestamp

    async def revision(self, session: Session) -> str | None:
        table = self.sessions
        async with self.engine.connect() as connection:
            stored = (await connection.execute(select(table.c.update_time).where(
                table.c.app_name == session.app_name, table.c.user_id == session.user_id,
                table.c.id == session.id))).scalar_one_or_none()
        return None if stored is None else marker_of(stored)
