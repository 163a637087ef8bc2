"""Evaluation throughput and overhead, measured side by side against one emulator:

(1) `ces_nb.evaluate` on N golden conversations (the demo app's goldens, repeated), at
    parallel 1 and parallel 8: conversations per second, and the parallel-8 / parallel-1 ratio;
(2) a plain loop doing the same RunSession calls with `Session.send` / `Session.respond` (same
    sessions, same inputs, the same client-tool answers) and no scoring: the ratio of evaluate()'s
    wall time to it is the evaluation overhead (goal: at most 1.15x).

Rounds are interleaved (raw, eval, raw, eval, ...) so both sides see the same machine.

    python benchmarks/evals.py [--conversations 1000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from emulator_process import EmulatorProcess  # noqa: E402

import ces_nb  # noqa: E402
from ces_nb.evals import load  # noqa: E402

GOLDENS = ROOT / "ces_nb" / "demo_app" / "evals" / "goldens"


def cases_for(n: int, tag: str) -> list:
    base, _ = load(GOLDENS)
    out = []
    for i in range(n):
        case = copy.deepcopy(base[i % len(base)])
        case.name = f"{case.name}-{tag}-{i}"
        out.append(case)
    return out


def raw_conversation(client, case) -> None:
    """What evaluate() sends for a case, with nothing scored or recorded."""
    session = client.session(session_id=f"raw-{case.name}-{time.monotonic_ns()}")
    session.auto_answer = False
    for number, step in enumerate(case.steps, 1):
        inputs = dict(step.inputs)
        if number == 1 and case.variables:
            inputs["variables"] = {**case.variables, **inputs.get("variables", {})}
        session.send(**inputs)
        mocks = list(step.mocks)
        while session.pending:
            answers = {}
            for cid, call in session.pending.items():
                m = next((m for m in mocks if m.tool == call.name), None)
                if m is not None:
                    mocks.remove(m)
                answers[cid] = m.response if m else {}
            session.respond(answers, how="mock")
        if session.ended:
            break


def raw(client, cases, parallel: int) -> float:
    started = time.perf_counter()
    if parallel == 1:
        for case in cases:
            raw_conversation(client, case)
    else:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda c: raw_conversation(client, c), cases))
    return time.perf_counter() - started


def evaluated(client, cases, parallel: int) -> float:
    started = time.perf_counter()
    run = ces_nb.evaluate(cases, client=client, parallel=parallel, progress=False)
    wall = time.perf_counter() - started
    if not run.passed:
        raise SystemExit(f"the goldens should all pass on the demo app:\n{run.text()[:2000]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; each runs conversations/rounds of each side")
    args = parser.parse_args()
    emulator = EmulatorProcess("--db", ":memory:")
    try:
        client = ces_nb.connect(endpoint=emulator.address, app="skyway")
        per_round = max(1, args.conversations // args.rounds)
        evaluated(client, cases_for(10, "warm"), 1)  # first-use imports, off the clock
        walls = {(side, p): 0.0 for side in ("raw", "eval") for p in (1, 8)}
        done = 0
        for r in range(args.rounds):
            for p in (1, 8):
                walls[("raw", p)] += raw(client, cases_for(per_round, f"raw{p}-{r}"), p)
                walls[("eval", p)] += evaluated(client, cases_for(per_round, f"eval{p}-{r}"), p)
            done += per_round
        turns = sum(len(c.steps) for c in cases_for(done, "count"))
        print(f"{done} golden conversations ({turns} user turns) per side and parallelism, {args.rounds} interleaved rounds")
        for p in (1, 8):
            print(f"  parallel {p}: evaluate {done / walls[('eval', p)]:7.1f} conversations/s · "
                  f"plain send loop {done / walls[('raw', p)]:7.1f} conversations/s")
        print(f"parallel 8 / parallel 1 throughput (evaluate): {walls[('eval', 1)] / walls[('eval', 8)]:.2f}x")
        for p in (1, 8):
            print(f"evaluate / plain RunSession loop wall time, parallel {p}: {walls[('eval', p)] / walls[('raw', p)]:.3f}x (goal <= 1.15x)")
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
