"""Run a coroutine to completion from synchronous code, in a notebook too.

A kernel's cell may already run inside an event loop, where asyncio.run refuses to
start another; so the coroutine always runs on its own loop in one worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Awaitable

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def run_sync(awaitable: Awaitable[Any]) -> Any:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ces-nb-async")

    async def wait() -> Any:
        return await awaitable

    return _pool.submit(asyncio.run, wait()).result()
