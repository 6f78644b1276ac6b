"""The run: client processes, one level of concurrency, and the whole benchmark from its options.

Each client is one process with one httpx client (HTTP keep-alive, its TLS connection opened before
the clock starts) that repeats whole transfers until the level's budget (transfers or seconds) is
spent. Around each level the server's CPU (``cpu.read_cpu``) and, for keybroker, its CPU per stage
(``cpu.stage_totals``) are read; the difference, per transfer, is the level's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kbbench import ROOT, cpu, crypto, profile, report
from kbbench.flows import (
    PEER_TRANSFER,
    REQUESTS,
    TRANSFER,
    VARIANTS,
    Target,
    TransferFailed,
    Variant,
    Workload,
    check_released,
    crypto_parts,
    make_quote,
    open_result,
    peer_responses,
    sizes,
    transfer_v1,
)
from kbbench.servers import (
    STAGES_ENV,
    Deployment,
    EssentialServer,
    FloorServer,
    Servers,
    ServerSpec,
    pin,
    set_up,
    ssl_context,
)
from keybroker.tee import sim
from keybroker.wire import binding

OUT = ROOT / ".bench" / "transfer.json"
#: what a level's clients talk to (``run_level``'s ``kind``)
KEYBROKER, FLOOR, ESSENTIAL = "keybroker", "floor", "essential"
LEVELS = (1, 8, 32)
#: Exit status when some transfers failed (the numbers count only the ones that succeeded).
EXIT_FAILED_TRANSFERS = 3


@dataclass
class Level:
    variant: str
    protocol: str
    key: str
    workload_key: str
    clients: int
    transfers: int
    errors: int
    seconds: float
    tx_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    server_cpu_ms_per_tx: float
    server_sys_ms_per_tx: float
    #: the servers' main threads (uvicorn's event loop: TLS, HTTP, routing, middleware)
    server_loop_ms_per_tx: float
    server_core_util: float
    #: runnable but waiting for its CPU (taken by another process): a noisy machine shows here
    server_cpu_wait_ms_per_tx: float
    client_cpu_ms_per_tx: float
    #: PostgreSQL's processes (0 on SQLite, whose work is in the server's own)
    db_cpu_ms_per_tx: float
    client_quote_ms_per_tx: float
    client_core_util: float
    other_cpu_s: float
    #: keybroker's CPU per transfer in each request-path stage (keybroker.stages); None for the floor
    stages_ms_per_tx: dict[str, float] | None = None
    crypto_ms_per_tx: float = 0.0
    crypto_bound_tx_per_s: float = 0.0
    ratio: float = 0.0
    #: Little's law: the lowest mean latency ``clients`` closed-loop clients can see if the server's
    #: one core did nothing but the cryptography (clients x crypto ms).
    crypto_floor_ms: float = 0.0
    #: crypto ms / server CPU ms per transfer: the ratio as if the server had its core to itself
    cpu_ratio: float = 0.0
    #: requests per transfer x the server CPU of its cheapest request (TLS + HTTP + middleware)
    http_floor_ms_per_tx: float = 0.0
    #: the framework floor (the peer) at the same level, same protocol; None without the peer
    peer_tx_per_s: float | None = None
    peer_p50_ms: float | None = None
    peer_p99_ms: float | None = None
    peer_server_cpu_ms_per_tx: float | None = None
    #: tx/s / the peer's tx/s at the same level: the primary comparison
    vs_floor: float | None = None
    #: the peer's server CPU per transfer / this row's: the share of it the HTTPS stack itself takes
    cpu_vs_floor: float | None = None
    #: this row's server CPU per transfer / the peer's: how many times the floor keybroker costs
    cpu_x_floor: float | None = None
    #: the essential-work peer (bench/essential_app.py) at the same level, /kbs/v1 only; None without it
    essential_server_cpu_ms_per_tx: float | None = None
    #: this row's server CPU per transfer / the essential peer's: how far keybroker is from the least
    cpu_x_essential: float | None = None
    #: the essential peer's server CPU per transfer / the floor's: the least any correct broker costs here
    essential_x_floor: float | None = None
    first_errors: list[str] = field(default_factory=list)
    #: the deployment measured (``ServerSpec``): worker processes per replica, replicas
    workers: int = 1
    replicas: int = 1
    #: its short label (``1w``, ``2w``, ``2r``)
    deployment: str = "1w"
    #: server CPU ms per transfer of each replica (of all transfers: how the clients' spread landed)
    replica_cpu_ms_per_tx: list[float] = field(default_factory=list)


# --- the clients ---------------------------------------------------------------------------------


def _client_main(
    index: int,
    t: Target,
    v: Variant,
    pki: sim.DevPki,
    w: Workload,
    cpus: set[int] | None,
    budget: int,
    seconds: float,
    barrier: Any,
    counter: Any,
    out: Any,
    kind: str = KEYBROKER,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    pin(cpus)
    # the essential-work peer answers keybroker's own requests: the real flow, quotes made per transfer
    fn = (PEER_TRANSFER if kind == FLOOR else TRANSFER)[v.protocol]
    lat: list[tuple[float, float]] = []
    errors: list[str] = []
    qcpu = 0.0
    cpu0 = 0.0
    try:
        with httpx.Client(base_url=t.url_for(index), verify=ssl_context(t.ca), timeout=60) as c:
            c.get("/healthz")  # the TLS handshake, outside the clock; later requests reuse the connection
            barrier.wait(timeout=120)
            # again, once all are connected: reconnects if the server's keep-alive timed out
            c.get("/healthz")
            barrier.wait(timeout=120)
            cpu0 = time.process_time()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with counter.get_lock():
                    if counter.value >= budget:
                        break
                    counter.value += 1
                start = time.monotonic()
                try:
                    _, q = fn(c, t, v, pki, w)
                except (TransferFailed, httpx.HTTPError, KeyError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                lat.append((start, time.monotonic()))
                qcpu += q
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the level
        errors.append(f"client crashed: {type(exc).__name__}: {exc}"[:300])
    out.put({"lat": lat, "errors": errors, "cpu": time.process_time() - cpu0, "qcpu": qcpu})


def _pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_ms:
        return float("nan")
    k = max(1, int(-(-p * len(sorted_ms) // 100)))
    return sorted_ms[min(k, len(sorted_ms)) - 1]


def run_level(
    server: Servers,
    t: Target,
    v: Variant,
    pki: sim.DevPki,
    w: Workload,
    clients: int,
    budget: int,
    seconds: float,
    client_cpus: set[int] | None,
    kind: str = KEYBROKER,
) -> Level:
    """One level: ``clients`` client processes against ``server``: keybroker, or ``kind`` the framework
    floor (``FLOOR``) or the essential-work peer (``ESSENTIAL``)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    counter = ctx.Value("i", 0)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_main,
            args=(i, t, v, pki, w, client_cpus, budget, seconds, barrier, counter, out, kind),
            daemon=True,
        )
        for i in range(clients)
    ]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        barrier.wait(timeout=120)  # all connected
        stages0 = cpu.stage_totals(server)  # read outside the CPU window: it is a request too
        barrier.wait(timeout=120)  # all connections fresh: go
        cpu0, busy0 = cpu.read_cpu(server.pids()), cpu.machine_busy()
        by_replica0 = [cpu.read_cpu(g) for g in server.pid_groups()]
        db0 = cpu.read_cpu(server.db_pids())
        for _ in procs:
            results.append(out.get(timeout=seconds + 180))
        cpu1, busy1 = cpu.read_cpu(server.pids()), cpu.machine_busy()
        by_replica1 = [cpu.read_cpu(g) for g in server.pid_groups()]
        db1 = cpu.read_cpu(server.db_pids())
        stages1 = cpu.stage_totals(server)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    spans = [s for r in results for s in r["lat"]]
    errors = [e for r in results for e in r["errors"]]
    n = len(spans)
    window = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else float("nan")
    ms = sorted((e - s) * 1000 for s, e in spans)
    client_cpu = sum(r["cpu"] for r in results)
    server_cpu = cpu1.total - cpu0.total
    db_cpu = db1.total - db0.total  # backends that ended meanwhile are lost (connections are pooled)
    nan = float("nan")

    def per_tx(seconds_: float) -> float:
        return round(seconds_ / n * 1000, 2) if n else nan

    return Level(
        variant=v.name if kind == KEYBROKER else f"{kind}/{v.protocol}/{v.workload}",
        protocol=f"/kbs/{v.protocol}",
        key="-" if kind == FLOOR else v.key_label,
        workload_key=v.workload_label,
        clients=clients,
        transfers=n,
        errors=len(errors),
        seconds=round(window, 3),
        tx_per_s=round(n / window, 1) if n else 0.0,
        p50_ms=round(_pct(ms, 50), 2),
        p99_ms=round(_pct(ms, 99), 2),
        mean_ms=round(sum(ms) / n, 2) if n else nan,
        max_ms=round(ms[-1], 2) if n else nan,
        server_cpu_ms_per_tx=per_tx(server_cpu),
        server_sys_ms_per_tx=per_tx(cpu1.system - cpu0.system),
        server_loop_ms_per_tx=per_tx(cpu1.loop - cpu0.loop),
        server_core_util=round(server_cpu / window, 2) if n else nan,
        server_cpu_wait_ms_per_tx=per_tx(cpu.wait_between(cpu0, cpu1)),
        client_cpu_ms_per_tx=per_tx(client_cpu),
        client_quote_ms_per_tx=per_tx(sum(r["qcpu"] for r in results)),
        db_cpu_ms_per_tx=per_tx(db_cpu),
        client_core_util=round(client_cpu / window / max(1, len(client_cpus or ())), 2) if n else nan,
        other_cpu_s=round(max(0.0, (busy1 - busy0) - server_cpu - client_cpu - db_cpu), 2),
        stages_ms_per_tx=cpu.stages_between(stages0, stages1, n),
        replica_cpu_ms_per_tx=[
            per_tx(b.total - a.total) for a, b in zip(by_replica0, by_replica1, strict=True)
        ],
        first_errors=[f"{k} (x{c})" for k, c in Counter(errors).most_common(3)],
    )


def compare_with_peer(level: Level, peer_results: Sequence[Level]) -> None:
    """Fill ``level``'s peer columns from the framework floor at the same protocol and level."""
    for p in peer_results:
        if p.protocol == level.protocol and p.clients == level.clients and p.transfers:
            level.peer_tx_per_s = p.tx_per_s
            level.peer_p50_ms = p.p50_ms
            level.peer_p99_ms = p.p99_ms
            level.peer_server_cpu_ms_per_tx = p.server_cpu_ms_per_tx
            level.vs_floor = round(level.tx_per_s / p.tx_per_s, 3)
            # CPU is read in clock ticks (10 ms): a level of a few transfers may read none
            if level.transfers and level.server_cpu_ms_per_tx > 0:
                level.cpu_vs_floor = round(p.server_cpu_ms_per_tx / level.server_cpu_ms_per_tx, 3)
            if level.transfers and p.server_cpu_ms_per_tx > 0:
                level.cpu_x_floor = round(level.server_cpu_ms_per_tx / p.server_cpu_ms_per_tx, 2)
            return


def compare_with_essential(level: Level, essential: Sequence[Level], floor: Sequence[Level]) -> None:
    """Fill ``level``'s essential columns from the essential-work peer at the same protocol and level
    (and the floor's, for essential x floor)."""
    e = next(
        (p for p in essential if p.protocol == level.protocol and p.clients == level.clients and p.transfers),
        None,
    )
    if e is None:
        return
    level.essential_server_cpu_ms_per_tx = e.server_cpu_ms_per_tx
    if level.transfers and e.server_cpu_ms_per_tx > 0:
        level.cpu_x_essential = round(level.server_cpu_ms_per_tx / e.server_cpu_ms_per_tx, 2)
    f = next(
        (p for p in floor if p.protocol == level.protocol and p.clients == level.clients and p.transfers),
        None,
    )
    if f is not None and f.server_cpu_ms_per_tx > 0:
        level.essential_x_floor = round(e.server_cpu_ms_per_tx / f.server_cpu_ms_per_tx, 2)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    quick: bool
    tee: str
    budget: int
    seconds: float
    levels: list[int]
    variants: list[Variant]
    out: Path
    pyspy: str | None
    tmp: str | None
    peer: bool
    #: the essential-work peer (bench/essential_app.py) beside the floor, for /kbs/v1
    essential: bool
    #: the essential peer's work in a thread pool (as keybroker's) rather than inline on the event loop
    essential_threads: bool
    #: the deployments measured, one after another (``--workers 1,2``: a scaling run)
    specs: list[ServerSpec]


def parse_args(argv: Sequence[str] | None, doc: str) -> Options:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="few transfers, the two main variants (a smoke run)"
    )
    parser.add_argument("--tee", choices=("tdx", "sgx"), default="tdx")
    parser.add_argument("--transfers", type=int, help="transfers per level (default 200; --quick 40)")
    parser.add_argument("--seconds", type=float, help="time limit per level (default 20; --quick 5)")
    parser.add_argument(
        "--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, e.g. 1,8,32"
    )
    parser.add_argument("--variants", help="comma-separated names (e.g. v1/aes/rsa3072); default all")
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"JSON results (default {OUT.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy at the highest level of each variant (py-spy on PATH or --py-spy)",
    )
    parser.add_argument("--py-spy", dest="pyspy", help="path to the py-spy binary")
    parser.add_argument(
        "--tmp", help="where the server's temporary data dir goes (default: the system's temp dir, on disk)"
    )
    parser.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="skip the framework floor (bench/floor_app.py), the peer the results are compared with",
    )
    parser.add_argument(
        "--no-essential",
        dest="essential",
        action="store_false",
        help="skip the essential-work peer (bench/essential_app.py: verify, wrap, signed audit record, one "
        "durable commit, nothing else), the least a correct broker does per /kbs/v1 transfer",
    )
    parser.add_argument(
        "--essential-threads",
        action="store_true",
        help="the essential peer works in a thread pool as keybroker does (default: inline, the cheaper)",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="keybroker serve --workers, comma-separated: each is measured in turn (1,2: the scaling report); "
        "above 1, or with several, on PostgreSQL",
    )
    parser.add_argument(
        "--replicas",
        default="1",
        help="replicas on one PostgreSQL, clients spread over them round-robin; comma-separated as --workers",
    )
    args = parser.parse_args(argv)
    try:
        workers = [int(x) for x in args.workers.split(",") if x.strip()]
        replicas = [int(x) for x in args.replicas.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers and --replicas take comma-separated numbers, e.g. 1,2")
    if not workers or not replicas or min(workers + replicas) < 1:
        parser.error("--workers and --replicas take numbers of at least 1")
    pairs = [(w, r) for r in replicas for w in workers]
    # several deployments compare on one database: all on PostgreSQL when any needs it
    on_pg = len(pairs) > 1 or any(w > 1 or r > 1 for w, r in pairs)
    specs = [ServerSpec(workers=w, replicas=r, postgres=on_pg) for w, r in pairs]
    for spec in specs:
        try:
            spec.check()
        except SystemExit as exc:
            parser.error(str(exc))
    variants = [v for v in VARIANTS if v.primary or not args.quick]
    if args.variants:
        wanted = {x.strip() for x in args.variants.split(",")}
        variants = [v for v in VARIANTS if v.name in wanted]
        if not variants:
            parser.error(f"--variants: none of {sorted(wanted)} is one of {[v.name for v in VARIANTS]}")
    pyspy = None
    if args.profile:
        pyspy = args.pyspy or shutil.which("py-spy") or _venv_tool("py-spy")
        if pyspy is None:
            parser.error("--profile needs py-spy (pip install py-spy; or pass --py-spy PATH)")
    return Options(
        quick=args.quick,
        tee=args.tee,
        budget=args.transfers or (40 if args.quick else 200),
        seconds=args.seconds or (5.0 if args.quick else 20.0),
        levels=[int(x) for x in args.levels.split(",") if x.strip()],
        variants=variants,
        out=args.out,
        pyspy=pyspy,
        tmp=args.tmp,
        peer=args.peer,
        essential=args.essential,
        essential_threads=args.essential_threads,
        specs=specs,
    )


def _venv_tool(name: str) -> str | None:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else None


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the clients run on: one server process pinned to the first, the clients
    to the rest; several (``--workers``, ``--replicas``, or a scaling run's points, all placed alike)
    and the clients on every CPU."""

    cpus: list[int]
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    server: str
    clients: str

    @classmethod
    def for_machine(cls, specs: Sequence[ServerSpec]) -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        spec = specs[0] if len(specs) == 1 else None
        if len(cpus) >= 2 and spec is not None and spec.processes == 1:
            return cls(
                cpus,
                {cpus[0]},
                set(cpus[1:]),
                f"{spec.describe()} pinned to CPU {cpus[0]}, alone there apart from other users",
                f"one process per client (HTTP + quote making), all pinned to CPU(s) {','.join(map(str, cpus[1:]))}",
            )
        what = spec.describe() if spec is not None else " / ".join(s.describe() for s in specs)
        if len(cpus) >= 2:
            # several server processes (or a scaling run's points, measured alike): every CPU for the
            # server, which the clients share (keep them few: the client side makes the quotes)
            everything = set(cpus)
            return cls(
                cpus,
                everything,
                everything,
                f"{what} on all {len(cpus)} CPUs ({','.join(map(str, cpus))}), shared with the clients",
                f"one process per client (HTTP + quote making), on the same {len(cpus)} CPUs as the server",
            )
        return cls(
            cpus,
            None,
            None,
            f"{what}, sharing the only CPU with the clients",
            "one process per client, sharing the only CPU with the server",
        )


@dataclass
class Run:
    """What a run gathers, for the report."""

    crypto: dict[str, float] = field(default_factory=dict)
    floor: float = float("nan")
    peer_floor: float = float("nan")
    commit_ms: float = float("nan")
    results: list[Level] = field(default_factory=list)
    peer_results: list[Level] = field(default_factory=list)
    essential_results: list[Level] = field(default_factory=list)
    #: what the essential peer answered to a tampered quote and a replayed nonce at warm-up (403 each)
    essential_checks: dict[str, Any] = field(default_factory=dict)
    essential_database: str = ""
    peer_sizes: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)


Exchanges = list[httpx.Request | httpx.Response]


def _recording_client(url: str, ca: Path | str, seen: Exchanges) -> httpx.Client:
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [seen.append], "response": [seen.append]}
    return httpx.Client(base_url=url, verify=ssl_context(ca), timeout=60, event_hooks=hooks)


def warm_up(
    target: Target,
    opts: Options,
    pki: sim.DevPki,
    work: Workload,
    aes_secret: bytes,
    peer_variant: dict[str, Variant],
) -> dict[str, Exchanges]:
    """A few transfers per variant outside the clock, each result opened and checked; the last transfer
    of each protocol's peer variant is recorded (its answers become the floor's)."""
    seen: Exchanges = []
    captured: dict[str, Exchanges] = {}
    with _recording_client(target.url, target.ca, seen) as c:
        for v in opts.variants:
            for _ in range(3):
                seen.clear()
                body, _ = TRANSFER[v.protocol](c, target, v, pki, work)
            if peer_variant[v.protocol] is v:
                captured[v.protocol] = list(seen)
            check_released(v, open_result(v, body, work), aes_secret)
    return captured


def start_peer(
    server: Deployment,
    placement: Placement,
    opts: Options,
    captured: dict[str, Exchanges],
    pki: sim.DevPki,
    work: Workload,
    peer_variant: dict[str, Variant],
    run: Run,
) -> tuple[FloorServer, Target]:
    """The framework floor with keybroker's captured answers, checked to take the same request sizes."""
    print("starting the framework floor (bench/floor_app.py) ...", flush=True)
    peer = FloorServer(server.data_dir, placement.server_cpus, peer_responses(captured))
    peer.start()
    # real quotes, made once: every peer transfer sends the same one
    nonce = base64.b64encode(os.urandom(32)).decode()
    quotes = {
        "v1": make_quote(pki, opts.tee, binding.v1_report_data(os.urandom(32), work.spki)),
        "v0": make_quote(
            pki,
            opts.tee,
            binding.v0_report_data(nonce, work.jwk(peer_variant.get("v0", VARIANTS[2]).workload), ""),
        ),
    }
    target = Target(
        peer.urls,
        str(server.ca),
        opts.tee,
        {},
        {},
        {k: base64.b64encode(q).decode() for k, q in quotes.items()},
    )
    seen: Exchanges = []
    peer_sizes: dict[str, dict[str, list[int]]] = {}
    with _recording_client(peer.url, server.ca, seen) as c:
        for proto, v in peer_variant.items():
            for _ in range(3):
                seen.clear()
                PEER_TRANSFER[proto](c, target, v, pki, work)
            peer_sizes[proto] = sizes(seen)
    run.peer_floor = cpu.request_floor(peer, 100 if opts.quick else 400)
    run.peer_sizes = {
        proto: {"keybroker": sizes(captured[proto]), "floor": peer_sizes[proto]} for proto in peer_sizes
    }
    return peer, target


#: A byte of the signed report body (48-byte header, then TDX MRSIGNERSEAM / SGX MRSIGNER at 152)
TAMPERED_BYTE = 200


def start_essential(
    server: Deployment, placement: Placement, opts: Options, pki: sim.DevPki, work: Workload, run: Run
) -> tuple[EssentialServer, Target]:
    """The essential-work peer, trusting keybroker's dev PKI, checked before it is measured: a few real
    transfers (the wrapped key opened by the workload), a tampered quote and a replayed nonce (403 each:
    it verifies, it does not just answer)."""
    print("starting the essential-work peer (bench/essential_app.py) ...", flush=True)
    database = server.pg.create_database("kb_essential") if server.pg is not None else None
    peer = EssentialServer(
        server.data_dir,
        placement.server_cpus,
        pki.directory,
        opts.tee,
        database,
        threads=opts.essential_threads,
    )
    run.essential_database = (
        "PostgreSQL (keybroker's server)" if database else "SQLite (WAL, keybroker's pragmas)"
    )
    peer.start()
    target = Target(peer.urls, str(server.ca), opts.tee, dict(peer.key_ids), {})
    v = next(v for v in opts.variants if v.protocol == "v1")
    with httpx.Client(base_url=peer.url, verify=ssl_context(server.ca), timeout=60) as c:
        for _ in range(3):
            body, _ = transfer_v1(c, target, v, pki, work)
            plain = open_result(v, body, work)
            if v.key == "aes" and len(plain) != 32:
                raise RuntimeError(f"the essential peer released {len(plain)} bytes, not an AES-256 key")
            if v.key == "rsa":
                check_released(v, plain, b"")
        url = f"/kbs/v1/keys/{target.key_ids[v.key]}/transfer"
        nonce_b64 = c.post(url).json()["nonce"]["val"]
        forged = bytearray(
            make_quote(pki, opts.tee, binding.v1_report_data(base64.b64decode(nonce_b64), work.spki))
        )
        forged[TAMPERED_BYTE] ^= 1
        tampered = {
            "quote": base64.b64encode(bytes(forged)).decode(),
            "nonce": {"val": nonce_b64},
            "user_data": work.spki_b64,
        }
        att = {"Attestation-Type": opts.tee.upper()}
        r_tampered = c.post(url, json=tampered, headers=att)
        nonce_b64 = c.post(url).json()["nonce"]["val"]
        quote = make_quote(pki, opts.tee, binding.v1_report_data(base64.b64decode(nonce_b64), work.spki))
        good = {
            "quote": base64.b64encode(quote).decode(),
            "nonce": {"val": nonce_b64},
            "user_data": work.spki_b64,
        }
        r_first, r_replay = c.post(url, json=good, headers=att), c.post(url, json=good, headers=att)
    run.essential_checks = {
        "tampered_quote_status": r_tampered.status_code,
        "replayed_nonce_status": r_replay.status_code,
        "fresh_quote_status": r_first.status_code,
    }
    if (r_tampered.status_code, r_first.status_code, r_replay.status_code) != (403, 200, 403):
        peer.stop()
        raise RuntimeError(f"the essential peer does not verify as it must: {run.essential_checks}")
    return peer, target


def measure(opts: Options, placement: Placement, tmp: Path, run: Run) -> None:
    """Each deployment in turn (a fresh one each: its own data dir and database); the first also gives
    the cryptography alone and the framework floor."""
    for i, spec in enumerate(opts.specs):
        base = tmp / spec.label() if len(opts.specs) > 1 else tmp
        base.mkdir(parents=True, exist_ok=True)
        measure_one(opts, spec, placement, base, run, first=i == 0)


def measure_one(
    opts: Options, spec: ServerSpec, placement: Placement, tmp: Path, run: Run, *, first: bool
) -> None:
    """Start ``spec``'s servers, set up, measure into ``run``; the servers stop whatever happens."""
    server = Deployment(spec, tmp, placement.server_cpus, env=STAGES_ENV)
    peer: FloorServer | None = None
    essential: EssentialServer | None = None
    # the peer stands in for each protocol's first variant (its workload key, its captured answers)
    peer_variant = {v.protocol: v for v in reversed(opts.variants)}
    try:
        print(f"starting keybroker serve: {spec.describe()}, in {tmp} ...", flush=True)
        server.start()
        aes_secret = os.urandom(32)
        target = set_up(server, opts.tee, aes_secret)
        pki = server.pki()
        work = Workload.generate()

        if first:
            # the cryptography alone, on the server's CPU while the server is idle
            pin(placement.server_cpus)
            print("measuring the cryptography alone ...", flush=True)
            run.crypto = crypto.crypto_costs(
                pki, opts.tee, work, 0.15 if opts.quick else 0.6, 2 if opts.quick else 3
            )
            pin(placement.client_cpus)
            run.floor = cpu.request_floor(server, 100 if opts.quick else 400)
            run.commit_ms = cpu.sqlite_commit_ms(tmp)

        captured = warm_up(target, opts, pki, work, aes_secret, peer_variant)
        peer_target = None
        if opts.peer and first:
            peer, peer_target = start_peer(server, placement, opts, captured, pki, work, peer_variant, run)
        essential_target = None
        if opts.essential and first and "v1" in peer_variant:
            essential, essential_target = start_essential(server, placement, opts, pki, work, run)

        for v in opts.variants:
            if peer is not None and peer_target is not None and peer_variant[v.protocol] is v:
                for n in opts.levels:
                    print(f"  framework floor for /kbs/{v.protocol} x {n} clients ...", flush=True)
                    run.peer_results.append(
                        run_level(
                            peer, peer_target, v, pki, work, n, max(opts.budget, n), opts.seconds,
                            placement.client_cpus, kind=FLOOR,
                        )
                    )  # fmt: skip
            if (
                essential is not None
                and essential_target is not None
                and v.protocol == "v1"
                and peer_variant[v.protocol] is v
            ):
                for n in opts.levels:
                    print(f"  essential work for /kbs/{v.protocol} x {n} clients ...", flush=True)
                    run.essential_results.append(
                        run_level(
                            essential, essential_target, v, pki, work, n, max(opts.budget, n), opts.seconds,
                            placement.client_cpus, kind=ESSENTIAL,
                        )
                    )  # fmt: skip
            cost = sum(run.crypto[p] for p in crypto_parts(v))
            for n in opts.levels:
                prof_out = opts.out.parent / f"transfer-profile-{v.name.replace('/', '_')}-{n}.txt"
                profiling = opts.pyspy if n == max(opts.levels) else None
                print(f"  {v.name} x {n} clients ({spec.label()}) ...", flush=True)
                with profile.py_spy(
                    profiling, server.main_pid(), prof_out, placement.client_cpus
                ) as produced:
                    level = run_level(
                        server,
                        target,
                        v,
                        pki,
                        work,
                        n,
                        max(opts.budget, n),
                        opts.seconds,
                        placement.client_cpus,
                    )
                level.workers, level.replicas, level.deployment = spec.workers, spec.replicas, spec.label()
                level.crypto_ms_per_tx = round(cost, 3)
                level.crypto_bound_tx_per_s = round(1000 / cost, 1)
                level.ratio = round(level.tx_per_s * cost / 1000, 3)
                level.crypto_floor_ms = round(n * cost, 2)
                level.cpu_ratio = round(cost / level.server_cpu_ms_per_tx, 3) if level.transfers else 0.0
                level.http_floor_ms_per_tx = round(REQUESTS[v.protocol] * run.floor, 2)
                compare_with_peer(level, run.peer_results)
                compare_with_essential(level, run.essential_results, run.peer_results)
                run.results.append(level)
                for path in produced:
                    run.profiles[f"{v.name} x {n} ({spec.label()})"] = {
                        "raw": str(path),
                        **profile.summarize_profile(path),
                    }
    finally:
        if essential is not None:
            essential.stop()
            with contextlib.suppress(OSError):
                shutil.copy(essential.log_path, opts.out.parent / "transfer-essential.log")
        if peer is not None:
            peer.stop()
            with contextlib.suppress(OSError):
                shutil.copy(peer.log_path, opts.out.parent / "transfer-floor.log")
        server.stop()
        for i, log in enumerate(server.log_paths):
            with contextlib.suppress(OSError):
                suffix = (f"-{spec.label()}" if len(opts.specs) > 1 else "") + (f"-{i}" if i else "")
                shutil.copy(log, opts.out.parent / f"transfer-server{suffix}.log")


def build_report(
    opts: Options, placement: Placement, tmp: Path, run: Run, loadavg_before: tuple[float, ...]
) -> dict[str, Any]:
    rows = [asdict(r) for r in run.results]
    peer_rows = [asdict(r) for r in run.peer_results]
    essential_rows = [asdict(r) for r in run.essential_results]
    return {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "tee": opts.tee,
            "mode": f"{'quick' if opts.quick else 'full'}: up to {opts.budget} transfers or {opts.seconds:g} s per level",
            "cpus": len(placement.cpus),
            "cpu_model": cpu.cpu_model(),
            "python": platform.python_version(),
            "server": placement.server + "; HTTPS (TLS 1.3) with keep-alive",
            "server_specs": [asdict(spec) for spec in opts.specs],
            "clients": placement.clients,
            "peer": (
                "the framework floor, bench/floor_app.py: FastAPI under uvicorn as keybroker is served (same "
                "TLS certificate and key, log_config=None, access_log=False, 1 process, httptools/uvloop), "
                "pinned to the server's CPU; no database, crypto or validation; same requests and body sizes, "
                "one real quote made before the run and reused (its clients make no quotes)"
                if opts.peer
                else "none (--no-peer)"
            ),
            "primary_comparison": "vs_floor = tx/s / the framework floor's tx/s, same protocol and level",
            "crypto_alone": "this process on the server's CPU while the server was idle, best of rounds",
            "stages": "keybroker.stages (KEYBROKER_BENCH_STAGES=1): thread CPU per request-path stage, "
            "exclusive of the stages nested in it, read from the server's /metrics around each level",
            "database": (
                "PostgreSQL (tests/helpers/postgres.py: a throwaway server on this machine, fsync=off), "
                "a fresh database per deployment"
                if any(spec.on_postgres for spec in opts.specs)
                else f"SQLite WAL, synchronous=FULL, on {cpu.fs_type(tmp)} in {tmp.parent}; a committed "
                f"one-row transaction there takes {run.commit_ms:.2f} ms"
            ),
            "sqlite_commit_ms": run.commit_ms,
            "loadavg_before": [round(x, 2) for x in loadavg_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        },
        "crypto_ms": run.crypto,
        "request_floor_ms": run.floor,
        "crypto_parts": {v.name: crypto_parts(v) for v in opts.variants},
        "results": rows,
        "peer": {
            "app": "bench/floor_app.py",
            "request_floor_ms": run.peer_floor,
            "sizes": run.peer_sizes,
            "client_bound_levels": sorted(
                {
                    (r["protocol"], r["clients"])
                    for r in peer_rows
                    if r["client_core_util"] >= report.CLIENT_BOUND
                }
            ),
            "results": peer_rows,
        }
        if opts.peer
        else None,
        "essential": {
            "app": "bench/essential_app.py",
            "work": "challenge: 32 random bytes, SHA-256 inserted (non-durable commit); transfer: JSON + base64, "
            "workload key (load_spki), Verifier.verify (DCAP, dev PKI collateral, REPORTDATA = SHA-512(nonce || "
            "user_data)), the policy's comparisons, SecL wrap, audit record (SHA-256 chain, Ed25519), one "
            "durable transaction (nonce spent, record inserted, head advanced)",
            "threads": opts.essential_threads,
            "database": run.essential_database,
            "checks": run.essential_checks,
            "results": essential_rows,
            "cpu": report.essential_cpu(rows, peer_rows, essential_rows),
        }
        if opts.essential and run.essential_results
        else None,
        "targets": report.targets(rows, peer_rows, essential_rows),
        "scaling": report.scaling(rows, len(placement.cpus)) if len(opts.specs) > 1 else None,
        "profile": run.profiles,
    }


def main(argv: Sequence[str] | None = None, doc: str = "") -> int:
    opts = parse_args(argv, doc or (__doc__ or ""))
    placement = Placement.for_machine(opts.specs)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="keybroker-bench-", dir=opts.tmp))
    loadavg_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    run = Run()
    try:
        measure(opts, placement, tmp, run)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = build_report(opts, placement, tmp, run, loadavg_before)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(out, indent=2) + "\n")
    report.print_report(out)
    print(f"\nresults: {opts.out}")
    failed = sum(r.errors for r in run.results + run.peer_results + run.essential_results)
    if failed:
        print(
            f"\n{failed} TRANSFERS FAILED (the numbers above count only those that succeeded); the servers' logs: "
            f"{opts.out.parent / 'transfer-server.log'}, {opts.out.parent / 'transfer-floor.log'}"
        )
        return EXIT_FAILED_TRANSFERS
    return 0
