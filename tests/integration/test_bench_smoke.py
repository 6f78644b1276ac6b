"""bench/transfer.py runs end to end in a tiny configuration and writes its JSON (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: bench/transfer.py's exit status when some transfers failed (they are reported, not hidden).
FAILED_TRANSFERS = 3


def test_transfer_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "transfer.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "transfer.py"),
            "--quick",
            "--levels",
            "1,2",
            "--transfers",
            "4",
            "--seconds",
            "10",
            "--out",
            str(out),
            "--tmp",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode in (0, FAILED_TRANSFERS), r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"meta", "crypto_ms", "crypto_parts", "request_floor_ms", "results", "targets"} <= set(report)
    rows = report["results"]
    assert {(row["variant"], row["clients"]) for row in rows} == {
        (v, n) for v in ("v1/aes/rsa3072", "v0/aes/rsa3072") for n in (1, 2)
    }
    for row in rows:
        assert {
            "protocol",
            "transfers",
            "errors",
            "tx_per_s",
            "p50_ms",
            "p99_ms",
            "crypto_ms_per_tx",
            "ratio",
            "server_cpu_ms_per_tx",
        } <= set(row)
        assert row["transfers"] + row["errors"] >= 4
    # a single client never races anything: its transfers all succeed
    assert all(row["transfers"] == 4 and row["errors"] == 0 for row in rows if row["clients"] == 1), rows
    assert all(v > 0 for v in report["crypto_ms"].values())
    assert {t["what"].split()[0] for t in report["targets"]} == {"/kbs/v1", "/kbs/v0"}
    assert "transfer" in r.stdout and "targets:" in r.stdout
