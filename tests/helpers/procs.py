"""Servers the test suite starts: each in a process group of its own, stopped by group, and checked
at the end of the session (``tests/conftest.py`` fails the run if one is still there).

Stopping only the leader's pid is not enough: PyKMIP's server forks workers that outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

#: Process groups started by this test session (the leader's pid is the group id).
_GROUPS: list[int] = []


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a new session (so a new process group), remembered for the end check."""
    proc: subprocess.Popen[Any] = subprocess.Popen(args, start_new_session=True, **kwargs)
    _GROUPS.append(proc.pid)
    return proc


def members(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after the command: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal the whole group, wait for it to be gone, then SIGKILL whatever is left of it."""
    pgid = proc.pid
    _signal_group(pgid, sig)
    deadline = time.monotonic() + timeout
    while members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def leftovers() -> dict[int, list[int]]:
    """Groups this session started that still have live processes: {pgid: [pids]}."""
    return {pgid: pids for pgid in _GROUPS if (pids := members(pgid))}


def kill_leftovers() -> None:
    for pgid in leftovers():
        _signal_group(pgid, signal.SIGKILL)
