"""Where the EvaluationService keeps its resources: evaluations, evaluation expectations, runs,
results, long-running operations and the leases on running runs (evaluation_lease.py), each stored as its serialized ces_v1beta message under
its resource name.

They live beside the conversations: in the same database when the session store is one (a
SQLite file survives a restart, and the `--workers` processes sharing a store see each other's
runs), in this process's memory for `--db :memory:`. One table, `ces_nb_evaluation_resources`,
created on first use; ADK's own tables are not touched."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message

KINDS = ("evaluation", "expectation", "run", "result", "operation", "lease")

_metadata = sa.MetaData()
_table = sa.Table(
    "ces_nb_evaluation_resources", _metadata,
    sa.Column("name", sa.String(512), primary_key=True),  # the full resource name
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("parent", sa.String(512), nullable=False, index=True),
    sa.Column("created_ns", sa.BigInteger, nullable=False),  # list order: oldest first, as CES lists
    sa.Column("body", sa.LargeBinary, nullable=False),
)


async def create_tables(engine) -> None:
    """This store's table in `engine`'s database, if it is not there yet."""
    async with engine.begin() as connection:
        await connection.run_sync(_metadata.create_all, checkfirst=True)


class EvaluationStore:
    """get / put / delete / list of (kind, name) -> a message: proto-plus, or protobuf (Operation);
    reads take the type to decode into (a proto-plus type, or services.operations.RawProto)."""

    def __init__(self, session_service: Any):
        # ADK's DatabaseSessionService, or a store wrapping one (as TurnStore does)
        self._engine = getattr(session_service, "db_engine", None) or getattr(getattr(session_service, "store", None), "db_engine", None)
        self._memory: dict[str, tuple[str, str, int, bytes]] = {}
        self._ready = asyncio.Lock()
        self._created = False

    @property
    def persistent(self) -> bool:
        return self._engine is not None

    async def _table(self) -> None:
        if self._created:
            return
        async with self._ready:
            if not self._created:
                await create_tables(self._engine)
                self._created = True

    async def put(self, kind: str, name: str, parent: str, message) -> None:
        body = message.SerializeToString() if isinstance(message, Message) else type(message).serialize(message)
        if self._engine is None:
            created = self._memory.get(name, (None, None, time.time_ns(), None))[2]
            self._memory[name] = (kind, parent, created, body)
            return
        await self._table()
        async with self._engine.begin() as connection:
            updated = await connection.execute(
                _table.update().where(_table.c.name == name).values(kind=kind, parent=parent, body=body))
            if updated.rowcount == 0:
                await connection.execute(_table.insert().values(name=name, kind=kind, parent=parent,
                                                                created_ns=time.time_ns(), body=body))

    async def get(self, kind: str, name: str, message_type):
        if self._engine is None:
            row = self._memory.get(name)
            return message_type.deserialize(row[3]) if row is not None and row[0] == kind else None
        await self._table()
        async with self._engine.connect() as connection:
            row = (await connection.execute(
                sa.select(_table.c.body).where(_table.c.name == name, _table.c.kind == kind))).first()
        return message_type.deserialize(row[0]) if row is not None else None

    async def delete(self, kind: str, name: str) -> bool:
        if self._engine is None:
            row = self._memory.get(name)
            if row is None or row[0] != kind:
                return False
            del self._memory[name]
            return True
        await self._table()
        async with self._engine.begin() as connection:
            done = await connection.execute(_table.delete().where(_table.c.name == name, _table.c.kind == kind))
        return done.rowcount > 0

    async def list(self, kind: str, parent: str, message_type) -> list:
        if self._engine is None:
            rows = sorted((created, name, body) for name, (k, p, created, body) in self._memory.items() if k == kind and p == parent)
            return [message_type.deserialize(body) for _, _, body in rows]
        await self._table()
        async with self._engine.connect() as connection:
            rows = (await connection.execute(
                sa.select(_table.c.body).where(_table.c.kind == kind, _table.c.parent == parent)
                .order_by(_table.c.created_ns, _table.c.name))).all()
        return [message_type.deserialize(r[0]) for r in rows]
