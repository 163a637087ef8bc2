"""Re-run the tutorial notebooks in place so their committed outputs match the code.

    make notebooks        (or: python notebooks/execute.py notebooks/*.ipynb)

Runs each notebook top to bottom in a fresh kernel against a fresh in-memory
emulator, the way nbval checks them. Cells tagged `nbval-skip` (real CES) are
not run and keep no outputs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from emulator_process import EmulatorProcess  # noqa: E402


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    skipped = {i: c for i, c in enumerate(nb.cells) if "nbval-skip" in c.get("metadata", {}).get("tags", [])}
    runnable = nbformat.v4.new_notebook(metadata=nb.metadata, cells=[c for i, c in enumerate(nb.cells) if i not in skipped])
    NotebookClient(runnable, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    cells = iter(runnable.cells)
    for i, cell in enumerate(nb.cells):
        if i in skipped:
            cell.outputs, cell.execution_count = [], None
        else:
            nb.cells[i] = next(cells)
    nbformat.write(nb, path)
    print(f"executed {path}")


def main() -> None:
    emulator = EmulatorProcess("--db", ":memory:")
    os.environ["CES_NB_EMULATOR"] = emulator.address
    try:
        for arg in sys.argv[1:] or sorted(str(p) for p in Path(__file__).parent.glob("*.ipynb")):
            execute(Path(arg))
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
