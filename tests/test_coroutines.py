"""run_sync: a coroutine run to completion from synchronous code, on its own loop in one thread."""

from __future__ import annotations

import asyncio
import multiprocessing

from ces_nb.coroutines import run_sync


def _answer_in(queue) -> None:
    queue.put(run_sync(asyncio.sleep(0, result="child")))


def test_run_sync_runs_inside_a_running_loop_and_in_a_forked_child():
    """A cell of a kernel already runs in a loop; and a child forked after the worker thread
    started (a multiprocessing pool on Linux) makes its own, not waits on the parent's."""
    async def inside_a_loop() -> str:
        return run_sync(asyncio.sleep(0, result="parent"))

    assert asyncio.run(inside_a_loop()) == "parent"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_answer_in, args=(queue,))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "run_sync in the forked child never finished"
    assert queue.get(timeout=5) == "child"
