"""pytest plugin (loaded with -p from pyproject): notebook runs (--nbval) get their own
in-memory emulator, started in pytest_sessionstart because fixtures never run
when only notebooks are collected. Kernels inherit its address via $CES_NB_EMULATOR."""

from __future__ import annotations

import os

from emulator_process import EmulatorProcess

_emulator: EmulatorProcess | None = None


def pytest_sessionstart(session) -> None:
    global _emulator
    if not session.config.getoption("nbval", default=False):
        return
    _emulator = EmulatorProcess("--db", ":memory:")
    os.environ["CES_NB_EMULATOR"] = _emulator.address


def pytest_sessionfinish(session, exitstatus) -> None:
    if _emulator is not None:
        _emulator.stop()
