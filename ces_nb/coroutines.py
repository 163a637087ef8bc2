"""Run a coroutine to completion from synchronous code, in a notebook too.

A kernel's cell may already run inside an event loop, where asyncio.run refuses to
start another; so the coroutine always runs on its own loop in one worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any, Awaitable

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def run_sync(awaitable: Awaitable[Any]) -> Any:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ces-nb-async")

    async def wait() -> Any:
        return await awaitable

    return _pool.submit(asyncio.run, wait()).result()


def _forget_pool() -> None:
    # A forked child has the pool but not its thread, and the pool, seeing itself idle, starts
    # none: run_sync would wait forever. The child makes its own.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)
