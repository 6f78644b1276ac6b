"""CPU accounting: from ``/proc``, a server's processes (user, system, their event-loop threads, time
runnable but waiting for a CPU) and the machine's busy time; from the server's ``/metrics``, its CPU
per request-path stage (``keybroker.stages``, switched on by ``servers.STAGES_ENV``)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from kbbench.servers import Servers, scrape, ssl_context

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds of a server's processes at one moment."""

    user: float
    system: float
    #: the processes' main threads: uvicorn's event loop (TLS, HTTP, routing, middleware)
    loop: float
    #: per thread id: nanoseconds runnable but waiting for a CPU (another process had it)
    waits: dict[str, int]

    @property
    def total(self) -> float:
        return self.user + self.system


def read_cpu(pids: Iterable[int]) -> CpuReading:
    user = system = loop = 0.0
    waits: dict[str, int] = {}
    for pid in pids:
        fields = _stat(Path(f"/proc/{pid}/stat"))
        if fields is None:
            continue
        user += int(fields[11]) / _TICK
        system += int(fields[12]) / _TICK
        main = _stat(Path(f"/proc/{pid}/task/{pid}/stat"))
        if main is not None:
            loop += (int(main[11]) + int(main[12])) / _TICK
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                waits[stat.parent.name] = int(stat.read_text().split()[1])
    return CpuReading(user, system, loop, waits)


def wait_between(before: CpuReading, after: CpuReading) -> float:
    """Seconds runnable but waiting for a CPU between two readings (threads that ended are lost)."""
    return sum(ns - before.waits.get(tid, 0) for tid, ns in after.waits.items()) / 1e9


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    v = [int(x) for x in parts]
    return (sum(v[:8]) - v[3] - v[4]) / _TICK


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, fstype, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "?"


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of ``pids`` together (VmRSS)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def request_floor(server: Servers, n: int) -> float:
    """Server CPU milliseconds of the cheapest request it serves (GET /healthz over the same HTTPS
    keep-alive connection: TLS, HTTP, the app's middleware; no database, no crypto), one client."""
    with httpx.Client(base_url=server.url, verify=ssl_context(server.ca), timeout=60) as c:
        for _ in range(20):
            c.get("/healthz")
        before = read_cpu(server.pids())
        for _ in range(n):
            c.get("/healthz")
        after = read_cpu(server.pids())
    return round((after.total - before.total) / n * 1000, 3)


def sqlite_commit_ms(directory: Path, n: int = 100) -> float:
    """Wall milliseconds of one committed single-row transaction, SQLite WAL + synchronous=FULL as the
    server sets it up, on the data dir's file system (the fsync every server commit pays)."""
    path = directory / "commit-probe.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (x INTEGER)")
        start = time.perf_counter()
        for i in range(n):
            con.execute("BEGIN")
            con.execute("INSERT INTO t VALUES (?)", (i,))
            con.execute("COMMIT")
        return round((time.perf_counter() - start) / n * 1000, 3)
    finally:
        con.close()


# --- per-stage CPU (keybroker.stages through /metrics) ---------------------------------------------

_STAGE_LINE = re.compile(r'^keybroker_bench_stage_(cpu_seconds|calls)_total\{stage="([a-z_]+)"\} (\S+)$')


def stage_totals(server: Servers) -> dict[str, tuple[float, float]] | None:
    """stage -> (CPU seconds, calls) summed over the replicas; None when the server does not report
    stages (the floor, ``--workers`` above 1, or a keybroker started without ``servers.STAGES_ENV``)."""
    if not server.stage_urls:
        return None
    totals: dict[str, list[float]] = {}
    for text in scrape(server.stage_urls, server.ca):
        for line in text.splitlines():
            m = _STAGE_LINE.match(line)
            if m:
                kind, name, value = m.groups()
                t = totals.setdefault(name, [0.0, 0.0])
                t[0 if kind == "cpu_seconds" else 1] += float(value)
    return {k: (v[0], v[1]) for k, v in totals.items()} if totals else None


def stages_between(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None, n: int
) -> dict[str, float] | None:
    """CPU milliseconds per transfer of each stage between two :func:`stage_totals`."""
    if before is None or after is None or not n:
        return None
    return {
        name: round((sec - before.get(name, (0.0, 0.0))[0]) / n * 1000, 3) for name, (sec, _) in after.items()
    }
