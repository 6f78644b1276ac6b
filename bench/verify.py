"""DCAP quote verification throughput: keybroker vs dcap-qvl, one core, warm collateral.

Run: ``.venv/bin/python bench/verify.py [--seconds S] [--rounds N] [--json]`` (``make bench``).

For the corpus SGX quote (v3) and TDX quotes (v4, and v5 TD 1.5ex) with their collateral, each
verifier is warmed up (collateral parsed once, keybroker's content-hash caches filled), then
verifies the same quote repeatedly for ``--seconds`` per round; the best of ``--rounds`` rounds
is reported. Both verifiers run in this process, pinned to one CPU, alternating rounds.
Per-quote work that remains after warm-up in keybroker: parse, two ECDSA P-256 verifications
(QE report by the PCK key, quote by the attestation key), revocation / window / TCB checks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl

from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.verify import verify_quote

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "attestation"

WORKLOADS = [
    (
        "SGX v3",
        "intel-dcap/phala-dcap-qvl/sgx_quote",
        "intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json",
        1751624924,
    ),
    (
        "TDX v4 (TD 1.0)",
        "intel-dcap/phala-dcap-qvl/tdx_quote",
        "intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json",
        1751624191,
    ),
    (
        "TDX v5 (TD 1.5ex)",
        "intel-dcap/phala-dcap-qvl/tdx_quote_td15ex",
        "intel-dcap/assembled/tdx_B0C06F000000_2026-10_nopckchain.json",
        1792714008,
    ),
]


def _rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="duration of one measuring round per verifier"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rows = []
    for name, quote_rel, coll_rel, at_secs in WORKLOADS:
        quote = (CORPUS / quote_rel).read_bytes()
        text = (CORPUS / coll_rel).read_text()
        ours_coll = QuoteCollateral.from_json(text)
        theirs_coll = dcap_qvl.QuoteCollateralV3.from_json(text)
        at = datetime.fromtimestamp(at_secs, UTC)

        def ours(quote: bytes = quote, coll: QuoteCollateral = ours_coll, at: datetime = at) -> object:
            return verify_quote(quote, coll, at=at)

        def theirs(quote: bytes = quote, coll: object = theirs_coll, t: int = at_secs) -> object:
            return dcap_qvl.verify(quote, coll, t)

        a, b = verify_quote(quote, ours_coll, at=at), dcap_qvl.verify(quote, theirs_coll, at_secs)
        assert (a.status, list(a.advisory_ids)) == (b.status, list(b.advisory_ids)), (
            name,
            a.status,
            b.status,
        )
        best_ours = best_theirs = 0.0
        for _ in range(args.rounds):
            best_ours = max(best_ours, _rate(ours, args.seconds))
            best_theirs = max(best_theirs, _rate(theirs, args.seconds))
        rows.append(
            {
                "workload": name,
                "keybroker_qps": round(best_ours),
                "dcap_qvl_qps": round(best_theirs),
                "ratio": round(best_ours / best_theirs, 2),
                "status": a.status,
            }
        )

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"DCAP quote verification, one core, warm collateral (best of {args.rounds} x {args.seconds}s)")
    print(f"{'workload':<20} {'keybroker q/s':>14} {'dcap-qvl q/s':>13} {'ratio':>7}  status")
    for r in rows:
        print(
            f"{r['workload']:<20} {r['keybroker_qps']:>14,} {r['dcap_qvl_qps']:>13,} {r['ratio']:>6.2f}x  {r['status']}"
        )


if __name__ == "__main__":
    main()
