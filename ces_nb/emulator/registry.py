"""The loaded apps, each with its runtime, sharing one session store."""

from __future__ import annotations

from google.adk.sessions import BaseSessionService, DatabaseSessionService, InMemorySessionService

from .errors import EmulatorError
from .export import LoadedApp
from .names import Name
from .python_runner import PythonToolRunner
from .runtime import AppRuntime


def session_service_for(db: str) -> BaseSessionService:
    """`:memory:` keeps sessions in memory; anything else is a SQLAlchemy URL or a file path."""
    if db == ":memory:":
        return InMemorySessionService()
    if "://" not in db:
        db = f"sqlite:///{db}"
    # ADK's store is async: plain sqlite:// URLs get the aiosqlite driver.
    if db.startswith("sqlite://"):
        db = "sqlite+aiosqlite://" + db[len("sqlite://"):]
    return DatabaseSessionService(db_url=db)


class AppRegistry:
    def __init__(self, apps: list[LoadedApp], session_service: BaseSessionService, model: str | None = None):
        self.session_service = session_service
        self.python_runner = PythonToolRunner()
        self.runtimes: dict[str, AppRuntime] = {}
        for app in apps:
            if app.app_id in self.runtimes:
                raise ValueError(f"two apps share the id {app.app_id!r}; load each app once")
            self.runtimes[app.app_id] = AppRuntime(app, session_service, self.python_runner, model)

    def runtime(self, name: Name) -> AppRuntime:
        try:
            return self.runtimes[name.app]
        except KeyError:
            loaded = ", ".join(sorted(self.runtimes)) or "none"
            raise EmulatorError.not_found(
                f"app {name.app!r} is not loaded in the emulator (loaded apps: {loaded}); "
                f"start it with `ces-nb emulator --app PATH` or use one of those ids"
            ) from None

    async def close(self) -> None:
        await self.python_runner.close()
