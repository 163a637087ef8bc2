"""The store a benchmark's emulator runs on: the default kind, a SQLite file, in a temp folder
that is removed when the benchmark exits. Each benchmark prints the line `describe` gives."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_folder: str | None = None


def default_store(name: str = "emulator.db") -> str:
    """A fresh SQLite file path for `--db`."""
    global _folder
    if _folder is None:
        _folder = tempfile.mkdtemp(prefix="ces-nb-bench-")
        atexit.register(shutil.rmtree, _folder, True)
    return str(Path(_folder) / name)


def describe(db: str, why: str = "") -> str:
    kind = "memory (:memory:)" if db == ":memory:" else f"SQLite file (the default kind), {db}"
    return f"store: {kind}" + (f"; {why}" if why else "")
