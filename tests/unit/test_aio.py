"""run_sync drives a coroutine from synchronous code, also where an event loop is already running
(a notebook cell), which asyncio.run refuses."""

from __future__ import annotations

import asyncio

import pytest

from edray.aio import run_sync


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def _fail() -> None:
    raise ValueError("row r1: field `messages` is missing")


def test_outside_a_loop() -> None:
    assert run_sync(_double(21)) == 42


def test_inside_a_running_loop_as_in_a_notebook() -> None:
    async def cell() -> int:
        pending = _double(1)
        with pytest.raises(RuntimeError):
            asyncio.run(pending)  # what the stages used to do
        pending.close()
        return run_sync(_double(4))

    assert asyncio.run(cell()) == 8


def test_errors_propagate_unchanged() -> None:
    async def cell() -> None:
        run_sync(_fail())

    with pytest.raises(ValueError, match="messages"):
        asyncio.run(cell())
    with pytest.raises(ValueError, match="messages"):
        run_sync(_fail())
