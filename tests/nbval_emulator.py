"""pytest plugin (loaded with -p from pyproject): notebook runs (--nbval) get their own
in-memory emulator, started in pytest_sessionstart because fixtures never run
when only notebooks are collected. Kernels inherit its address via $CES_NB_EMULATOR.
Under pytest-xdist (`make test` runs `-n auto`) each worker runs its own notebooks against its own
emulator; the controller, which runs no test, starts none."""

from __future__ import annotations

import os

from emulator_process import EmulatorProcess

_emulator: EmulatorProcess | None = None


def pytest_sessionstart(session) -> None:
    global _emulator
    if not session.config.getoption("nbval", default=False) or _is_xdist_controller(session.config):
        return
    _emulator = EmulatorProcess("--db", ":memory:")
    os.environ["CES_NB_EMULATOR"] = _emulator.address


def pytest_sessionfinish(session, exitstatus) -> None:
    if _emulator is not None:
        _emulator.stop()


def _is_xdist_controller(config) -> bool:
    return bool(config.getoption("numprocesses", default=None)) and not hasattr(config, "workerinput")
