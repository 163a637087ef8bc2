"""Turns reach the store whole, or not at all.

ADK writes each event to the session store as it happens: the user's message (a tool
answer included) at the start of a run, then every model and tool event. A turn cut
short (the emulator killed, the client's deadline, a cancel) would leave half of it
stored, with no turn record: a re-sent tool answer would then find its call already
answered, and the next turn would start from an agent that never finished speaking.

`TurnStore` stands between the runner and the real store. While a turn is open, the
session's new events live only on the live session object; `commit` writes them to the
store in order, the turn record last, before the client hears that the turn completed.
`abort` drops them: the caller forgets the live object, and the next turn reads the
session back from the store as it was after the last completed turn.

A turn may also run on a *window* of the live session (`begin(..., window_start=N)`): the
runner then sees a session whose events start at N, sharing the live session's state, and
every event it appends goes to both. ADK walks, filters and copies every event of the session
it is given several times per model call; a window keeps that cost flat however long the
conversation grows, while the live session (and the store) keep every event.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

from google.adk.events import Event
from google.adk.sessions import BaseSessionService, Session


# A failpoint for the fault tests: hold each commit this long, so a kill -9 can land inside a
# turn that has begun streaming but is not stored yet. Unset in normal use.
COMMIT_DELAY_S = float(os.environ.get("CES_NB_FAILPOINT_COMMIT_DELAY_S") or 0)


class TurnStore(BaseSessionService):
    def __init__(self, store: BaseSessionService):
        self.store = store
        self.commit_delay_s = COMMIT_DELAY_S  # the failpoint; the warm-up's scratch store has none
        # session id -> (the live session, how many of its events were stored when the turn began,
        # the session the runner sees: the live one, or a window on it)
        self._open: dict[str, tuple[Session, int, Session]] = {}

    def begin(self, session: Session, window_start: int = 0) -> None:
        view = session
        if window_start > 0:
            # A shallow copy: the same state dict, its own (short) events list.
            view = session.model_copy(update={"events": session.events[window_start:]})
        self._open[session.id] = (session, len(session.events), view)

    def live(self, session: Session) -> Session:
        """The live session behind `session` (a window of an open turn, or itself)."""
        open_turn = self._open.get(session.id)
        return open_turn[0] if open_turn is not None else session

    async def commit(self, session_id: str) -> None:
        """Write the open turn's events to the store, in order."""
        if self.commit_delay_s:
            await asyncio.sleep(self.commit_delay_s)
        session, stored, _view = self._open.pop(session_id)
        pending = session.events[stored:]
        # The store appends each event to the session object itself: take them off first.
        del session.events[stored:]
        append_events = getattr(self.store, "append_events", None)  # batching_store.TurnBatchingStore: one transaction
        if append_events is not None:
            await append_events(session, pending)
            return
        for event in pending:
            await self.store.append_event(session, event)

    def abort(self, session_id: str) -> None:
        """Forget the open turn; its events were never stored."""
        self._open.pop(session_id, None)

    async def append_event(self, session: Session, event: Event) -> Event:
        open_turn = self._open.get(session.id)
        if open_turn is None:
            return await self.store.append_event(session, event)
        live, _stored, view = open_turn
        appended = await super().append_event(view, event)  # in memory only, until commit
        if view is not live and not event.partial:
            live.events.append(appended)  # the state is shared; the events list is not
        return appended

    async def get_session(self, *, app_name: str, user_id: str, session_id: str, config: Optional[Any] = None) -> Optional[Session]:
        open_turn = self._open.get(session_id)
        if open_turn is not None:
            return open_turn[2]  # the runner continues the live session (or its window), open events included
        return await self.store.get_session(app_name=app_name, user_id=user_id, session_id=session_id, config=config)

    async def create_session(self, *, app_name: str, user_id: str, state: Optional[dict[str, Any]] = None,
                             session_id: Optional[str] = None) -> Session:
        return await self.store.create_session(app_name=app_name, user_id=user_id, state=state, session_id=session_id)

    async def list_sessions(self, *, app_name: str, user_id: Optional[str] = None):
        return await self.store.list_sessions(app_name=app_name, user_id=user_id)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        self._open.pop(session_id, None)
        await self.store.delete_session(app_name=app_name, user_id=user_id, session_id=session_id)
