"""py-spy sampling of the server (``--profile``; ``pip install py-spy``, not a project dependency),
bucketed by where its time went."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kbbench.servers import pin

#: A sample whose innermost frame is one of these is a thread waiting, not working.
IDLE_LEAVES = ("Selector.select (selectors.py", "Condition.wait (threading.py", "Event.wait (threading.py")
# Buckets for the working samples: the first pattern, in this order, found anywhere in the stack.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("crypto: quote verification", ("verify_quote (", "verify_parsed_quote (")),
    ("collateral lookup (PCK extension parse)", ("quote_fmspc_and_ca (",)),
    ("crypto: EAR issue", ("issue_ear (",)),
    ("crypto: EAR verify", ("verify_ear (",)),
    ("crypto: wrap (SecL/JWE)", ("software_wrap (", "jwe_wrap (")),
    ("DB commit (incl. fsync)", ("do_commit (",)),
    ("audit append (head check, record hash, signature)", ("keybroker/audit/",)),
    ("DB: nonces", ("attestation/nonces.py",)),
    ("DB: key + policy lookup", ("_key_and_policy (",)),
    ("DB: sessions/resources (kbs/v0)", ("KbsV0Service",)),
    ("DB: other (ORM, SQL, connections)", ("sqlalchemy/", "sqlite3")),
    ("JWK/SPKI checks, report data", ("_check_jwk (", "load_spki (", "v0_report_data (", "v1_report_data (")),
    ("policy evaluation", ("appraisal/",)),
    ("threadpool hand-off (anyio)", ("run_sync_in_worker_thread (", "WorkerThread.run (")),
    ("TLS", ("ssl.py", "sslproto.py")),
    ("JSON & validation", ("json/", "pydantic", "rfc8785", "keybroker/jcs.py", "strictjson.py")),
    ("metrics & middleware", ("prometheus_client/", "keybroker/api/app.py", "starlette/middleware/")),
    ("HTTP server & framework", ("uvicorn/", "starlette/", "fastapi/", "h11/")),
    ("asyncio loop", ("asyncio/",)),
]


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Bucket py-spy's collapsed stacks (``--format raw``), as % of the server's working samples.

    py-spy counts a thread in a blocking call that it does not know as idle (fsync, for one) as
    working, which is what we want here: "DB commit" is CPU and disk waits together.
    """
    buckets: Counter[str] = Counter()
    self_frames: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or any(p in frames[-1] for p in IDLE_LEAVES):
            idle += n
            continue
        busy += n
        for name, pats in BUCKETS:
            if any(p in stack for p in pats):
                buckets[name] += n
                break
        else:
            buckets["other"] += n
        self_frames[frames[-1]] += n
        for f in set(frames[1:]):
            if "keybroker/" in f and "cli/" not in f:
                incl[f] += n

    def pct(c: int) -> float:
        return round(100 * c / busy, 1) if busy else 0.0

    return {
        "samples": busy,
        "idle_samples": idle,
        "buckets_pct": {k: pct(c) for k, c in buckets.most_common()},
        "top_self_pct": {k: pct(c) for k, c in self_frames.most_common(top)},
        "top_keybroker_inclusive_pct": {k: pct(c) for k, c in incl.most_common(top)},
    }


@contextlib.contextmanager
def py_spy(pyspy: str | None, pid: int, out: Path, cpus: set[int] | None) -> Iterator[list[Path]]:
    """Sample the server with py-spy (all threads, GIL holders and waiters alike) while the block runs."""
    produced: list[Path] = []
    if pyspy is None:
        yield produced
        return
    cmd = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out),
        "--nonblocking",
        "--subprocesses",  # serve --workers: the supervisor's workers are where the requests run
    ]
    proc = subprocess.Popen(  # noqa: PLW1509
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: pin(cpus)) if cpus else None,
    )
    try:
        time.sleep(0.5)  # attached
        yield produced
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            produced.append(out)
