"""Import cost: `import IPython, ces_nb` over `import IPython`, fresh interpreters,
alternated, medians of 15 each (goal: <= 0.15 s more). Also `%load_ext ces_nb`'s import.

    python benchmarks/import_time.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

CASES = {
    "import IPython": "import IPython",
    "import IPython, ces_nb": "import IPython, ces_nb",
    "import IPython, ces_nb.magics": "import IPython, ces_nb.magics",
}


def timed(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    times: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(15):
        for label, code in CASES.items():
            times[label].append(timed(code))
    base = statistics.median(times["import IPython"])
    for label in CASES:
        m = statistics.median(times[label])
        print(f"{label:34} {m * 1e3:8.1f} ms   {m / base:.3f}x   +{(m - base):.3f} s over import IPython")
    extra = statistics.median(times["import IPython, ces_nb"]) - base
    print(f"import ces_nb costs {extra:.3f} s over import IPython (goal <= 0.15 s)")


if __name__ == "__main__":
    main()
