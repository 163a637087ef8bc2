"""The emulator keeps the live session objects of recent sessions only; older ones come back
from the store, with their history, when they speak again."""

from __future__ import annotations

import asyncio

from google.cloud import ces_v1

from ces_nb.emulator import runtime as runtime_module
from ces_nb.emulator.export import load_export
from ces_nb.emulator.python_runner import PythonToolRunner
from ces_nb.emulator.store import session_service_for
from ces_nb.emulator.runtime import AppRuntime
from ces_nb.emulator.server import demo_app_path


def test_only_recent_sessions_stay_live_and_older_ones_resume_from_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_module, "MAX_LIVE_SESSIONS", 2)

    async def scenario():
        runtime = AppRuntime(load_export(str(demo_app_path())), session_service_for(str(tmp_path / "store.db")), PythonToolRunner())

        async def say(session_id: str, text: str):
            config = ces_v1.SessionConfig(session=f"projects/p/locations/l/apps/skyway/sessions/{session_id}")
            return await runtime.run_turn_to_end(session_id, config, [ces_v1.SessionInput(text=text)])

        try:
            for session_id in ("a", "b", "c"):
                await say(session_id, "Hello")
            live = [sid for sid, state in runtime._sessions.items() if state.session is not None]
            outputs = await say("a", "What is my loyalty tier?")
            return live, outputs
        finally:
            await runtime.python_runner.close()

    live, outputs = asyncio.run(scenario())
    assert sorted(live) == ["b", "c"]
    # "a" was read back from the store: its second turn is numbered 2 and carries on.
    assert {o.turn_index for o in outputs} == {2}
    assert "SkyWay Miles" in " ".join(o.text for o in outputs)
