"""Run a coroutine to completion from synchronous code, inside or outside a running event loop.

Stage functions are synchronous and drive their asyncio clients with :func:`run_sync`. ``asyncio.run``
refuses to start when the calling thread already runs a loop (a Jupyter notebook, an async web app);
there the coroutine runs on a fresh loop in a worker thread and the caller blocks until it finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` and return its result (exceptions propagate unchanged)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="edray-run-sync") as pool:
        return pool.submit(asyncio.run, coro).result()
