"""The loaded apps, each with its runtime, sharing one session store."""

from __future__ import annotations

from google.adk.sessions import BaseSessionService

from .errors import EmulatorError, quote
from .export import LoadedApp
from .names import Name
from .python_runner import PythonToolRunner
from .runtime import AppRuntime
from .sandbox import SandboxLimits


class AppRegistry:
    def __init__(self, apps: list[LoadedApp], session_service: BaseSessionService, model: str | None = None,
                 tool_limits: SandboxLimits | None = None):
        self.session_service = session_service
        self.python_runner = PythonToolRunner(limits=tool_limits)
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
                f"app {quote(name.app)} is not loaded in the emulator (loaded apps: {loaded}); "
                f"start it with `ces-nb emulator --app PATH` or use one of those ids"
            ) from None

    async def close(self) -> None:
        await self.python_runner.close()
