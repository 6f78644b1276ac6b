"""Soak: many attested key transfers against one ``keybroker serve``, its resident memory along the way.

Run: ``.venv/bin/python bench/soak.py [--transfers 100000] [--clients 4] [--variant v1/aes/rsa3072]``
(``make soak``).

The server is started and set up as ``bench/transfer.py`` does (``keybroker serve --dev``, SQLite in a
temporary data dir, pinned to the first CPU, the clients on the others; ``bench/kbbench``). After a
warm-up (``--warm-up`` transfers: caches, pools and the allocator settle), the transfers run in
``--chunks`` equal parts; after each part the server's RSS (every process of it, ``VmRSS``) is read.
The report gives RSS at launch, at the start (after the warm-up), in the middle and at the end, the
ratios middle/start and end/start, and whether both are within 10% ("flat"); it asserts nothing and
times nothing beyond reporting throughput. Results go to ``.bench/soak.json``; the exit status is 3
when some transfers failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from kbbench import ROOT, cpu  # noqa: E402 - after the path that finds them
from kbbench.driver import EXIT_FAILED_TRANSFERS, Placement, run_level  # noqa: E402
from kbbench.flows import TRANSFER, VARIANTS, Workload, check_released, open_result  # noqa: E402
from kbbench.servers import Deployment, ServerSpec, set_up, ssl_context  # noqa: E402

OUT = ROOT / ".bench" / "soak.json"
#: RSS is "flat" when the middle and the end are within this fraction of the start
FLAT = 0.10


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--transfers", type=int, default=100_000, help="transfers after the warm-up")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--chunks", type=int, default=10, help="RSS is read after each of this many parts")
    parser.add_argument("--warm-up", dest="warm_up", type=int, default=500, help="transfers before the start")
    parser.add_argument("--variant", default="v1/aes/rsa3072", help=f"one of {[v.name for v in VARIANTS]}")
    parser.add_argument("--tee", choices=("tdx", "sgx"), default="tdx")
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"JSON results (default {OUT.relative_to(ROOT)})"
    )
    parser.add_argument("--tmp", help="where the server's temporary data dir goes (default: the system's)")
    args = parser.parse_args(argv)
    variant = next((v for v in VARIANTS if v.name == args.variant), None)
    if variant is None:
        parser.error(f"--variant: {args.variant} is not one of {[v.name for v in VARIANTS]}")
    if args.transfers < args.chunks or args.chunks < 2:
        parser.error("--chunks must be at least 2 and at most --transfers")

    spec = ServerSpec()
    placement = Placement.for_machine([spec])
    tmp = Path(tempfile.mkdtemp(prefix="keybroker-soak-", dir=args.tmp))
    server = Deployment(spec, tmp, placement.server_cpus)
    samples: list[dict[str, Any]] = []
    done = errors = 0
    first_errors: list[str] = []
    seconds = 0.0
    try:
        print(f"starting keybroker serve --dev in {tmp} ...", flush=True)
        server.start()
        launch_rss = cpu.rss_bytes(server.pids())
        aes_secret = os.urandom(32)
        target = set_up(server, args.tee, aes_secret)
        pki = server.pki()
        work = Workload.generate()
        # one transfer opened and checked: the key released is the one set up
        with httpx.Client(base_url=target.url, verify=ssl_context(target.ca), timeout=60) as c:
            body, _ = TRANSFER[variant.protocol](c, target, variant, pki, work)
            check_released(variant, open_result(variant, body, work), aes_secret)
        print(f"warm-up: {args.warm_up} transfers ...", flush=True)
        if args.warm_up:
            warm = run_level(
                server, target, variant, pki, work, args.clients, args.warm_up, 3600.0, placement.client_cpus
            )
            errors += warm.errors
        samples.append({"after": 0, "rss_bytes": cpu.rss_bytes(server.pids())})
        per_chunk = [args.transfers // args.chunks] * args.chunks
        per_chunk[-1] += args.transfers - sum(per_chunk)
        for i, n in enumerate(per_chunk):
            level = run_level(
                server, target, variant, pki, work, args.clients, n, 24 * 3600.0, placement.client_cpus
            )
            done += level.transfers
            errors += level.errors
            seconds += level.seconds if level.transfers else 0.0
            first_errors = first_errors or level.first_errors
            rss = cpu.rss_bytes(server.pids())
            samples.append({"after": done, "rss_bytes": rss, "tx_per_s": level.tx_per_s})
            print(
                f"  part {i + 1}/{args.chunks}: {done} transfers, RSS {rss / 2**20:.1f} MiB, "
                f"{level.tx_per_s:.0f} tx/s, {level.errors} errors",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for log in server.log_paths:
            with contextlib.suppress(OSError):
                shutil.copy(log, args.out.parent / "soak-server.log")
        shutil.rmtree(tmp, ignore_errors=True)

    start = samples[0]["rss_bytes"]
    middle = samples[len(samples) // 2]["rss_bytes"]
    end = samples[-1]["rss_bytes"]
    ratios = {"middle_vs_start": round(middle / start, 4), "end_vs_start": round(end / start, 4)}
    flat = all(abs(r - 1) <= FLAT for r in ratios.values())
    report = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "variant": variant.name,
            "tee": args.tee,
            "clients": args.clients,
            "server": placement.server + "; HTTPS (TLS 1.3) with keep-alive, SQLite WAL",
            "warm_up": args.warm_up,
        },
        "transfers": done,
        "errors": errors,
        "first_errors": first_errors,
        "tx_per_s": round(done / seconds, 1) if seconds else 0.0,
        "rss_bytes": {"launch": launch_rss, "start": start, "middle": middle, "end": end},
        "rss_ratio": ratios,
        "flat_within": FLAT,
        "flat": flat,
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    mib = {k: v / 2**20 for k, v in report["rss_bytes"].items()}
    print()
    print(
        f"soak: {done} {variant.name} transfers ({errors} failed), {report['tx_per_s']:.0f} tx/s, {args.clients} clients"
    )
    print(
        f"  server RSS: launch {mib['launch']:.1f} MiB, start {mib['start']:.1f} MiB (after {args.warm_up} "
        f"warm-up transfers), middle {mib['middle']:.1f} MiB, end {mib['end']:.1f} MiB"
    )
    print(
        f"  middle/start {ratios['middle_vs_start']:.3f}, end/start {ratios['end_vs_start']:.3f}: "
        f"{'flat' if flat else 'NOT flat'} within {FLAT:.0%}"
    )
    print(f"results: {args.out}")
    return EXIT_FAILED_TRANSFERS if errors else 0


if __name__ == "__main__":
    sys.exit(main())
