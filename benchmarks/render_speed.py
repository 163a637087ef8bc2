"""Rendering cost, measured side by side in one run:

1. a typical turn (text, citations, a span tree): Turn._repr_mimebundle_ as a share of the
   RunSession call that produced it (goal <= 2 %);
2. a 10 000-span tree: HTML build time and size, against the budget (<= 150 ms, <= 3 MB),
   with json.dumps of the same tree alongside as a yardstick.

    python benchmarks/render_speed.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from emulator_process import EmulatorProcess  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import default_store, describe  # noqa: E402

import ces_nb  # noqa: E402
from ces_nb.convert.session_output import turn_from_outputs  # noqa: E402
from ces_nb.model import Span, Turn  # noqa: E402
from ces_nb.render.html import turn_html  # noqa: E402


def typical_turn_share(rounds: int = 60) -> tuple[float, float, float]:
    db = default_store()
    print(describe(db))
    server = EmulatorProcess("--db", db)
    try:
        client = ces_nb.connect("projects/bench/locations/us/apps/skyway", endpoint=server.address)
        run_times, render_times = [], []
        for r in range(rounds + 1):
            session = client.session()
            request = {"config": {"session": session.name}, "inputs": [{"text": "How many bags can I check?"}]}
            t0 = time.perf_counter()
            response = client.sessions.run_session(request=request)
            t1 = time.perf_counter()
            turn = turn_from_outputs(response.outputs, request["inputs"])
            t2 = time.perf_counter()
            turn._repr_mimebundle_()
            t3 = time.perf_counter()
            if r:
                run_times.append(t1 - t0)
                render_times.append(t3 - t2)
        return statistics.median(render_times), statistics.median(run_times), len(turn_html(turn))
    finally:
        server.stop()


def big_tree(n: int = 10_000) -> Span:
    """A realistic-looking tree: turns of LLM/Tool/Callback spans under agent spans."""
    start = 1_700_000_000_000_000_000
    root = Span("root", start, start + 10_000_000_000, 10_000_000_000, {"perceived latency (ms)": 812.4})
    made, parent, i = 1, root, 0
    while made < n:
        if i % 50 == 0:
            parent = Span("agent", start + i * 900_000, None, 40_000_000, {"agent": f"Agent {i // 50}"})
            root.children.append(parent)
            made += 1
            i += 1
            continue
        kind = ("LLM", "Tool", "Callback")[i % 3]
        attrs = {"LLM": {"agent": "SkyWay Concierge", "model": "playback", "input token count": 120 + i % 40,
                         "output token count": 30, "time to first chunk (ms)": 2.5},
                 "Tool": {"name": "get_flight_status", "agent": "SkyWay Concierge", "args": {"flight_number": f"SW{i}"},
                          "response": {"status": "on time", "gate": "A4"}, "tool call id": f"call_{i}"},
                 "Callback": {"agent": "SkyWay Concierge", "stage": "before_model"}}[kind]
        parent.children.append(Span(kind, start + i * 900_000, None, 700_000 + i % 900_000, attrs))
        made += 1
        i += 1
    return root


def main() -> None:
    render, run, size = typical_turn_share()
    print(f"typical turn: render {render * 1e3:.2f} ms vs RunSession {run * 1e3:.2f} ms -> "
          f"{render / run * 100:.2f} % of the turn (goal <= 2 %); HTML {size / 1024:.1f} KB")

    tree = big_tree()
    count = sum(1 for _ in tree.walk())
    turn = Turn(index=1, root_span=tree, completed=True)
    html_times, json_times = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        html = turn_html(turn)
        t1 = time.perf_counter()
        json.dumps(tree.to_dict())
        t2 = time.perf_counter()
        html_times.append(t1 - t0)
        json_times.append(t2 - t1)
    build = statistics.median(html_times)
    mb = len(html.encode()) / 1e6
    print(f"{count}-span tree: HTML in {build * 1e3:.0f} ms = {build / 0.150:.2f} of the 150 ms budget "
          f"({build / statistics.median(json_times):.2f}x json.dumps of the same tree); "
          f"{mb:.2f} MB = {mb / 3:.2f} of the 3 MB budget")


if __name__ == "__main__":
    main()
