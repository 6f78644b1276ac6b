"""api.threads.run_blocking: the routes' blocking work in a thread of its pool, off the event loop,
with the caller's context, its result and its exceptions as they were."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from keybroker.api.threads import run_blocking
from keybroker.errors import InvalidInput

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def _work(x: int, *, y: int) -> tuple[int, str, int]:
    _who.set("changed in the thread")  # a copy: the caller's context keeps its value
    return x + y, _who.get(), threading.get_ident()


def test_runs_off_the_loop_with_a_copy_of_the_context() -> None:
    async def main() -> tuple[tuple[int, str, int], int, str]:
        _who.set("caller")
        seen: list[str] = []

        def read() -> str:
            seen.append(_who.get())
            return seen[-1]

        assert await run_blocking(read) == "caller"
        result = await run_blocking(_work, 1, y=2)
        return result, threading.get_ident(), _who.get()

    (total, inside, thread), loop_thread, after = asyncio.run(main())
    assert total == 3 and inside == "changed in the thread"
    assert thread != loop_thread and after == "caller"


def test_exceptions_come_back_as_raised() -> None:
    def fail() -> None:
        raise InvalidInput("bad body", field="quote")

    with pytest.raises(InvalidInput) as info:
        asyncio.run(run_blocking(fail))
    assert info.value.extra["field"] == "quote"
