"""CPU time per stage of the request path (parse, verify, policy, database, audit, wrap, JSON), for the
benchmark only.

Off unless the process starts with ``KEYBROKER_BENCH_STAGES=1`` (``bench/transfer.py`` sets it for the
server it starts): then ``with stage("verify"):`` adds the thread's CPU time inside the block, less
that of the stages nested in it, to that stage's total, and ``/metrics`` serves the totals
(``keybroker_bench_stage_cpu_seconds_total``, ``keybroker_bench_stage_calls_total``). Off,
:func:`stage` returns one shared object whose enter and exit do nothing (about 0.1 µs a use).

Thread CPU time (``time.thread_time``), not wall time: a stage that waits (for the disk, a lock, the
database) is charged only for what its thread computed, kernel time included (an fsync's own work).
Pure: no HTTP, database or settings.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

ENV: Final = "KEYBROKER_BENCH_STAGES"
#: The stages the request path reports, in the order the benchmark prints them.
STAGES: Final = ("parse", "verify", "policy", "database", "audit", "wrap", "json")

_enabled = os.environ.get(ENV) == "1"
_lock = threading.Lock()
#: stage -> [CPU seconds, calls]
_totals: dict[str, list[float]] = {}
_local = threading.local()


class _Off:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_OFF: Final = _Off()


class _Stage:
    """One timed block; nested blocks pause the enclosing one (exclusive times add up to the total)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        now = time.thread_time()
        stack: list[str] | None = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        elif stack:
            _charge(stack[-1], now - _local.mark, 0)
        stack.append(self.name)
        _local.mark = now

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        now = time.thread_time()
        stack: list[str] = _local.stack
        _charge(stack.pop(), now - _local.mark, 1)
        _local.mark = now


def _charge(name: str, seconds: float, calls: int) -> None:
    with _lock:
        total = _totals.get(name)
        if total is None:
            _totals[name] = [seconds, float(calls)]
        else:
            total[0] += seconds
            total[1] += calls


def stage(name: str) -> _Stage | _Off:
    """A context manager charging the block's thread CPU time to ``name`` (a no-op when off)."""
    return _Stage(name) if _enabled else _OFF


def timed(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the function's calls are stage ``name`` (one flag test a call when off)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _enabled:
                return fn(*args, **kwargs)
            with _Stage(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def enabled() -> bool:
    return _enabled


def enable(on: bool = True) -> None:
    """Switch the accounting on or off in this process (tests; the server reads :data:`ENV`)."""
    global _enabled
    _enabled = on


def snapshot() -> dict[str, tuple[float, int]]:
    """stage -> (CPU seconds, calls) since the process started or :func:`reset`."""
    with _lock:
        return {name: (t[0], int(t[1])) for name, t in _totals.items()}


def reset() -> None:
    with _lock:
        _totals.clear()
