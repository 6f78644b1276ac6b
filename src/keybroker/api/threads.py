"""Blocking work (database, cryptography) off the event loop, for the routes every release takes.

Starlette's ``run_in_threadpool`` goes through anyio's ``to_thread.run_sync`` (a capacity limiter,
a cancel scope and anyio's own worker bookkeeping around each call): ``bench/transfer.py`` measured
0.2-0.3 ms of CPU per request for it, a tenth of a ``/kbs/v1`` transfer. :func:`run_blocking` hands
the call to a thread pool of this module's through asyncio directly, in a copy of the caller's
context (as anyio does). As with anyio, a call runs to its end once started: a client that goes
away does not interrupt a release half-way (its outcome is still committed and audited).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: As many threads as anyio's default limiter allows (SQLite serializes writers anyway).
MAX_THREADS: Final = 40

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The pool, made on first use in this process (a worker process forked or spawned by the
    server makes its own)."""
    global _pool, _pool_pid
    pool = _pool
    if pool is not None and _pool_pid == os.getpid():
        return pool
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="keybroker-blocking")
            _pool_pid = os.getpid()
        return _pool


async def run_blocking(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` in a thread of the pool; its result or its exception."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(_executor(), call)
