"""The report: the issue's targets (met, and feasible here at all) and the printed tables."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

P99_TARGET_MS = 50.0
RATIO_TARGET = 0.5
#: the issue's CPU target: server CPU per transfer within this many times the framework floor's
CPU_X_FLOOR_TARGET = 2.0
#: a client core busier than this means the level was (near) client-bound
CLIENT_BOUND = 0.85
#: the clients of the p99 target
P99_CLIENTS = 32
#: the stages keybroker.stages reports, in order
STAGES = ("parse", "verify", "policy", "database", "audit", "wrap", "json")


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None and x == x else "n/a"


def _by_deployment(rows: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``rows``, with a line naming the deployment before each deployment's rows when there are several."""
    multi = len({r.get("deployment") for r in rows}) > 1
    last = None
    for r in rows:
        if multi and r.get("deployment") != last:
            last = r.get("deployment")
            print(f"[{last}: {r['workers']} worker(s) x {r['replicas']} replica(s)]")
        yield r


def print_report(report: dict[str, Any]) -> None:
    m = report["meta"]
    rows = report["results"]
    peer = report.get("peer")
    print()
    print(f"keybroker attested key transfer, {m['tee'].upper()} simulator evidence, {m['mode']}")
    print(f"  server:  {m['server']}")
    print(f"  clients: {m['clients']}")
    print(f"  peer:    {m['peer']}")
    print(f"  crypto alone: {m['crypto_alone']}")
    print(f"  database: {m['database']}")
    print(
        f"  machine: {m['cpus']} x {m['cpu_model']}, load average before/after {m['loadavg_before']} / {m['loadavg_after']}"
    )
    print()
    print("keybroker vs the framework floor (the peer, same run, same level): the primary comparison")
    head = (
        f"{'protocol':<9}{'key':<9}{'workload':<9}{'clients':>7}{'n':>5}{'err':>4}{'tx/s':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'floor tx/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'vs floor':>9}"
        f"{'srv ms/tx':>10}{'floor srv':>10}{'cpu vs floor':>13}{'x floor':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in _by_deployment(rows):
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['workload_key']:<9}{r['clients']:>7}{r['transfers']:>5}"
            f"{r['errors']:>4}{_fmt(r['tx_per_s'], '.1f'):>8}{_fmt(r['p50_ms'], '.1f'):>8}"
            f"{_fmt(r['p99_ms'], '.1f'):>8}{_fmt(r['peer_tx_per_s'], '.1f'):>11}{_fmt(r['peer_p50_ms'], '.1f'):>8}"
            f"{_fmt(r['peer_p99_ms'], '.1f'):>8}{_fmt(r['vs_floor'], '.3f'):>9}"
            f"{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['peer_server_cpu_ms_per_tx'], '.2f'):>10}"
            f"{_fmt(r['cpu_vs_floor'], '.3f'):>13}{_fmt(r.get('cpu_x_floor'), '.2f'):>8}"
        )
        for e in r["first_errors"]:
            print(f"      error: {e}")
    print()
    for line in (
        "floor: bench/floor_app.py under uvicorn exactly as keybroker is served (same TLS certificate, options,",
        "CPU), answering the same requests (same body sizes and shapes, the real server's answers replayed) with",
        "no database, no crypto, no validation. vs floor = tx/s / floor tx/s at the same level: the share of",
        "what any app on this HTTPS stack reaches here. srv ms/tx: server CPU per transfer; cpu vs floor = floor",
        "srv / srv: the share of keybroker's server CPU that the stack itself (TLS, HTTP, framework) takes;",
        "x floor = srv / floor srv: how many times the floor's server CPU a keybroker transfer costs.",
    ):
        print("  " + line)
    if peer:
        print()
        print(
            "the framework floor itself (same client machinery; a real quote made once, so no quote making)"
        )
        head = (
            f"{'protocol':<9}{'workload':<9}{'clients':>7}{'n':>5}{'err':>4}{'tx/s':>8}{'p50 ms':>8}"
            f"{'p99 ms':>8}{'srv ms/tx':>10}{'(sys)':>7}{'core':>6}{'cpu wait':>9}{'cli ms/tx':>10}{'core':>6}"
            f"{'other cpu s':>12}"
        )
        print(head)
        print("-" * len(head))
        for r in peer["results"]:
            print(
                f"{r['protocol']:<9}{r['workload_key']:<9}{r['clients']:>7}{r['transfers']:>5}{r['errors']:>4}"
                f"{_fmt(r['tx_per_s'], '.1f'):>8}{_fmt(r['p50_ms'], '.1f'):>8}{_fmt(r['p99_ms'], '.1f'):>8}"
                f"{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['server_sys_ms_per_tx'], '.2f'):>7}"
                f"{_fmt(r['server_core_util'] * 100, '.0f') + '%':>6}"
                f"{_fmt(r['server_cpu_wait_ms_per_tx'], '.2f'):>9}{_fmt(r['client_cpu_ms_per_tx'], '.2f'):>10}"
                f"{_fmt(r['client_core_util'] * 100, '.0f') + '%':>6}{_fmt(r['other_cpu_s'], '.2f'):>12}"
            )
            for e in r["first_errors"]:
                print(f"      error: {e}")
        print()
        print(
            f"  GET /healthz server CPU: floor {_fmt(peer['request_floor_ms'], '.3f')} ms, keybroker "
            f"{_fmt(report['request_floor_ms'], '.3f')} ms (its middleware and metrics on top). Body bytes per"
        )
        print("  transfer, requests / responses (keybroker; floor):")
        for proto, sz in peer["sizes"].items():
            kb, fl = sz["keybroker"], sz["floor"]
            print(
                f"    /kbs/{proto}: {kb['request_bytes']} / {kb['response_bytes']}; "
                f"{fl['request_bytes']} / {fl['response_bytes']}"
            )
        bound = [r for r in peer["results"] if r["transfers"] and r["client_core_util"] >= CLIENT_BOUND]
        if bound:
            print(
                "  The floor's clients' core was at >= "
                f"{CLIENT_BOUND * 100:.0f}% at {', '.join(sorted({str(r['clients']) for r in bound}, key=int))} "
                "clients: there the floor was (near) client-bound, its tx/s a lower bound on the server side's."
            )
    if report.get("essential"):
        print_essential(report["essential"])
    print()
    print("vs the cryptography alone (informative)")
    head = (
        f"{'protocol':<9}{'key':<9}{'workload':<9}{'clients':>7}{'tx/s':>8}{'crypto ms':>10}{'bound tx/s':>11}"
        f"{'ratio':>7}{'cpu ratio':>10}{'crypto lat ms':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in _by_deployment(rows):
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['workload_key']:<9}{r['clients']:>7}{_fmt(r['tx_per_s'], '.1f'):>8}"
            f"{r['crypto_ms_per_tx']:>10.2f}{r['crypto_bound_tx_per_s']:>11.0f}"
            f"{r['ratio']:>7.2f}{r['cpu_ratio']:>10.2f}{r['crypto_floor_ms']:>14.1f}"
        )
    print()
    print("  crypto ms: the server-side cryptography alone per transfer, one core; bound = 1000 / crypto ms;")
    for line in (
        "ratio = tx/s / bound. cpu ratio = crypto ms / server CPU ms per transfer: the same ratio had the",
        "server had its core to itself (other processes taking that core lower the first, not this one).",
        "crypto lat ms = clients x crypto ms: the lowest mean latency closed-loop clients could see if the",
        "server's core did nothing but the cryptography (Little's law).",
    ):
        print("  " + line)
    print()
    head = (
        f"{'protocol':<9}{'key':<9}{'workload':<9}{'clients':>7}{'srv ms/tx':>10}{'(sys)':>7}{'core':>6}"
        f"{'cpu wait':>9}{'= crypto':>9}{'+ http':>8}{'+ rest':>8}{'cli ms/tx':>10}{'(quote)':>8}{'core':>6}"
        f"{'other cpu s':>12}"
    )
    print("where keybroker's CPU went (ms per transfer)")
    print(head)
    print("-" * len(head))
    for r in _by_deployment(rows):
        rest = r["server_cpu_ms_per_tx"] - r["crypto_ms_per_tx"] - r["http_floor_ms_per_tx"]
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['workload_key']:<9}{r['clients']:>7}"
            f"{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['server_sys_ms_per_tx'], '.2f'):>7}"
            f"{_fmt(r['server_core_util'] * 100, '.0f') + '%':>6}{_fmt(r['server_cpu_wait_ms_per_tx'], '.2f'):>9}"
            f"{r['crypto_ms_per_tx']:>9.2f}{r['http_floor_ms_per_tx']:>8.2f}{_fmt(rest, '.2f'):>8}"
            f"{_fmt(r['client_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['client_quote_ms_per_tx'], '.2f'):>8}"
            f"{_fmt(r['client_core_util'] * 100, '.0f') + '%':>6}{_fmt(r['other_cpu_s'], '.2f'):>12}"
        )
    print()
    for line in (
        "srv: the server process's CPU per transfer (all threads; of which kernel), the share of its core it",
        "used, and the time it was runnable but waiting for that core (another process had it). It splits",
        f"into crypto (alone, as above) + http (requests per transfer x {report['request_floor_ms']:.2f} ms, the",
        "server CPU of GET /healthz on the same connection: TLS, HTTP, middleware) + rest (database, audit,",
        "handlers, validation). cli: the client processes' CPU per transfer (HTTP + making quotes, of which",
        "quotes) and the share of the client core(s). other: CPU seconds used meanwhile by anything else.",
    ):
        print("  " + line)
    print_stages(rows)
    if report.get("scaling"):
        print_scaling(report["scaling"], report["meta"]["cpus"])
    print()
    print()
    print("cryptography alone, one core, best of rounds (ms per call):")
    for name, value in report["crypto_ms"].items():
        print(f"  {name:<42}{value:>8.3f}")
    for name, parts in report["crypto_parts"].items():
        print(f"  {name}: {' + '.join(parts)}")
    print()
    print(
        f"targets: the issue asked for throughput >= {RATIO_TARGET} x the crypto-alone bound and p99 < "
        f"{P99_TARGET_MS:.0f} ms at {P99_CLIENTS} clients;"
    )
    print("whether each is met, and whether the floor measured in this run allows it at all:")
    for t in report["targets"]:
        print(f"  {'MET    ' if t['met'] else 'NOT MET'} {t['what']}: {t['detail']}")
        feasible = {True: "yes", False: "NO", None: "unknown"}[t["feasible"]]
        print(f"          feasible here: {feasible}: {t['why']}")
    for name, prof in (report.get("profile") or {}).items():
        print()
        print(f"server profile, {name} (py-spy: {prof['samples']} working samples; % of them):")
        for k, pct in prof["buckets_pct"].items():
            print(f"  {k:<44}{pct:>6.1f}%")
        print("  top frames (self):")
        for k, pct in list(prof["top_self_pct"].items())[:8]:
            print(f"    {pct:>5.1f}%  {k}")


def print_essential(essential: dict[str, Any]) -> None:
    """The essential-work peer's levels, and server CPU per transfer of the floor, it and keybroker."""
    print()
    where = "in a thread pool" if essential.get("threads") else "inline on the event loop"
    print(
        f"the essential work ({essential['app']}: {essential['database']}, {where}; the same client flow as "
        "keybroker's)"
    )
    head = (
        f"{'protocol':<9}{'key':<9}{'clients':>7}{'n':>5}{'err':>4}{'tx/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'srv ms/tx':>10}{'(sys)':>7}{'core':>6}{'cpu wait':>9}{'cli ms/tx':>10}{'core':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in essential["results"]:
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['clients']:>7}{r['transfers']:>5}{r['errors']:>4}"
            f"{_fmt(r['tx_per_s'], '.1f'):>8}{_fmt(r['p50_ms'], '.1f'):>8}{_fmt(r['p99_ms'], '.1f'):>8}"
            f"{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['server_sys_ms_per_tx'], '.2f'):>7}"
            f"{_fmt(r['server_core_util'] * 100, '.0f') + '%':>6}{_fmt(r['server_cpu_wait_ms_per_tx'], '.2f'):>9}"
            f"{_fmt(r['client_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['client_core_util'] * 100, '.0f') + '%':>6}"
        )
        for e in r["first_errors"]:
            print(f"      error: {e}")
    checks = essential["checks"]
    print(
        f"  checked at warm-up: a tampered quote got {checks.get('tampered_quote_status')}, a replayed nonce "
        f"{checks.get('replayed_nonce_status')} (it verifies; it does not just answer)"
    )
    print()
    print("server CPU per transfer (ms, pooled over the levels): floor, essential work, keybroker")
    head = (
        f"{'protocol':<9}{'variant':<16}{'floor':>8}{'essential':>10}{'keybroker':>10}{'kb x floor':>11}"
        f"{'kb x ess':>9}{'ess x floor':>12}"
    )
    print(head)
    print("-" * len(head))
    for c in essential["cpu"]:
        print(
            f"{c['protocol']:<9}{c['variant'] or '-':<16}{_fmt(c['floor_ms'], '.2f'):>8}"
            f"{_fmt(c['essential_ms'], '.2f'):>10}{_fmt(c['keybroker_ms'], '.2f'):>10}"
            f"{_fmt(c['keybroker_x_floor'], '.2f'):>11}{_fmt(c['keybroker_x_essential'], '.2f'):>9}"
            f"{_fmt(c['essential_x_floor'], '.2f'):>12}"
        )
    for c in essential["cpu"]:
        print(f"  {c['protocol']}: {c['feasibility']}")
    for line in (
        "essential: bench/essential_app.py on the floor's stack, doing only what no correct broker can skip",
        "(quote verification with REPORTDATA binding, the policy's comparisons, SecL wrap, an Ed25519-signed",
        "audit record, one durable commit with the spent nonce; the nonce's non-durable insert at challenge).",
        "kb x ess: how far keybroker is from that least; ess x floor: the least any correct broker costs here.",
    ):
        print("  " + line)


def print_stages(rows: Sequence[dict[str, Any]]) -> None:
    """keybroker's server CPU per transfer by stage (keybroker.stages), beside the floor's."""
    staged = [r for r in rows if r.get("stages_ms_per_tx")]
    if not staged:
        return
    print()
    print("keybroker's server CPU per transfer by stage (ms; keybroker.stages, thread CPU)")
    head = (
        f"{'protocol':<9}{'key':<9}{'clients':>7}{'srv':>7}{'floor':>7}{'x floor':>8}{'loop':>7}"
        + "".join(f"{name:>9}" for name in STAGES)
        + f"{'rest':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in _by_deployment(staged):
        st = r["stages_ms_per_tx"]
        rest = r["server_cpu_ms_per_tx"] - r["server_loop_ms_per_tx"] - sum(st.get(n, 0.0) for n in STAGES)
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['clients']:>7}{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>7}"
            f"{_fmt(r['peer_server_cpu_ms_per_tx'], '.2f'):>7}{_fmt(r.get('cpu_x_floor'), '.2f'):>8}"
            f"{_fmt(r['server_loop_ms_per_tx'], '.2f'):>7}"
            + "".join(f"{_fmt(st.get(n), '.3f'):>9}" for n in STAGES)
            + f"{_fmt(rest, '.2f'):>7}"
        )
    print()
    for line in (
        "loop: the event-loop thread (TLS, HTTP parsing, routing, middleware, metrics, handing work to a",
        "thread). In the worker threads: parse (the body: strict JSON, model, base64), verify (the evidence:",
        "parse, signatures, chains, collateral, report data, its digest), policy (appraisal input, claims",
        "digest, stored policy parse, SecL clauses), database (sessions, statements, commits and their fsync,",
        "less what is nested), audit (the record: hash, signature, statements), wrap (key store: unseal and",
        "wrap to the workload key), json (the response). rest: srv less all of those (thread hand-off, the",
        "handlers' own code, the audit checkpointer, the interpreter's own work).",
    ):
        print("  " + line)


def _pooled_server_cpu_ms(rows: Sequence[dict[str, Any]]) -> float | None:
    """Server CPU ms per transfer over all of ``rows`` together (more ticks than any one level has)."""
    n = sum(r["transfers"] for r in rows)
    cpu = sum(r["server_cpu_ms_per_tx"] * r["transfers"] for r in rows if r["transfers"])
    return round(cpu / n, 3) if n and cpu > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def feasibility_line(x: float) -> str:
    """The CPU target's feasibility, from the essential work's multiple of the floor."""
    verdict = "within" if x <= CPU_X_FLOOR_TARGET else "above"
    return (
        f"essential work alone is {x:.2f} x the floor here ({verdict} the {CPU_X_FLOOR_TARGET:g} x target: "
        + (
            "a correct broker can meet it on this stack)"
            if x <= CPU_X_FLOOR_TARGET
            else "no correct broker can meet it on this stack here)"
        )
    )


def essential_cpu(
    results: Sequence[dict[str, Any]],
    peer_results: Sequence[dict[str, Any]],
    essential_results: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per protocol the essential peer ran for: server CPU per transfer (pooled over the levels) of the
    floor, the essential work and keybroker, their ratios, and the feasibility of the CPU target."""
    out = []
    for proto in ("/kbs/v1", "/kbs/v0"):
        ess = [r for r in essential_results if r["protocol"] == proto and r["transfers"]]
        if not ess:
            continue
        floor = _pooled_server_cpu_ms([r for r in peer_results if r["protocol"] == proto and r["transfers"]])
        essential = _pooled_server_cpu_ms(ess)
        # keybroker's rows of the variant the essential peer stood in for (same key, same workload key)
        kb_rows = [
            r
            for r in results
            if r["protocol"] == proto
            and r["transfers"]
            and (r["key"], r["workload_key"]) == (ess[0]["key"], ess[0]["workload_key"])
        ]
        keybroker = _pooled_server_cpu_ms(kb_rows)
        x = _ratio(essential, floor)
        out.append(
            {
                "protocol": proto,
                "variant": kb_rows[0]["variant"] if kb_rows else None,
                "floor_ms": floor,
                "essential_ms": essential,
                "keybroker_ms": keybroker,
                "keybroker_x_floor": _ratio(keybroker, floor),
                "keybroker_x_essential": _ratio(keybroker, essential),
                "essential_x_floor": x,
                "feasibility": feasibility_line(x) if x is not None else "not measured (no framework floor)",
            }
        )
    return out


def targets(
    results: list[dict[str, Any]],
    peer_results: list[dict[str, Any]],
    essential_results: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The issue's targets per protocol: met or not, and whether the framework floor measured in the same
    run allows them here at all.

    p99 < 50 ms at 32 clients: closed-loop, mean latency = clients / throughput (Little's law), so it
    needs more than 32 / 0.05 s = 640 tx/s; feasible here only if the floor itself went faster than that.
    Ratio >= 0.5: a server doing the floor's work plus the cryptography and nothing else runs at most at
    min(the floor's best tx/s, 1000 / (crypto ms + the floor's server CPU ms)); times the crypto seconds
    per transfer, that is the best ratio possible here (generous: the floor's clients make no quotes).
    """
    out = []
    clients = P99_CLIENTS
    needed = clients * 1000 / P99_TARGET_MS
    for proto in ("/kbs/v1", "/kbs/v0"):
        rows = [r for r in results if r["protocol"] == proto and r["transfers"]]
        if not rows:
            continue
        floor = [r for r in peer_results if r["protocol"] == proto and r["transfers"]]
        fbest = max(floor, key=lambda r: r["tx_per_s"]) if floor else None
        ftop = max(floor, key=lambda r: r["clients"]) if floor else None
        fcpu = _pooled_server_cpu_ms(floor)
        top = max(r["clients"] for r in rows)
        at_top = [r for r in rows if r["clients"] == top]
        worst = max(at_top, key=lambda r: r["p99_ms"])
        measured = ", ".join(f"{r['key']}/{r['workload_key']} {r['p99_ms']:.1f} ms" for r in at_top)
        detail = f"p99 at {top} clients {measured}" + (
            "" if top >= clients else f" (the run stopped at {top} clients: not measured at {clients})"
        )
        detail += f"; {worst['variant']} did {worst['tx_per_s']:.1f} tx/s there, mean latency {worst['mean_ms']:.0f} ms"
        why = (
            f"Little's law: {clients} closed-loop clients see a mean latency of {clients} / throughput, so a p99 "
            f"under {P99_TARGET_MS:.0f} ms needs a mean under {P99_TARGET_MS:.0f} ms, i.e. more than "
            f"{clients} / {P99_TARGET_MS / 1000:g} s = {needed:.0f} tx/s"
        )
        feasible: bool | None = None
        if fbest is not None and ftop is not None:
            feasible = fbest["tx_per_s"] > needed
            why += (
                f"; the framework floor (the same TLS + uvicorn + FastAPI serving the same requests, no database, "
                f"no crypto) measured in this run did at best {fbest['tx_per_s']:.0f} tx/s ({fbest['clients']} "
                f"client{'s' if fbest['clients'] != 1 else ''}), {fbest['tx_per_s'] / needed:.2f} of that, and at {ftop['clients']} clients "
                f"{ftop['tx_per_s']:.0f} tx/s with p99 {ftop['p99_ms']:.1f} ms"
            )
            why += (
                f": an app doing nothing misses it here (mean >= {clients} / {fbest['tx_per_s']:.0f} tx/s = "
                f"{clients * 1000 / fbest['tx_per_s']:.0f} ms)"
                if not feasible
                else f": the stack allows it, the gap is keybroker's own work (vs floor {worst['vs_floor']})"
            )
            if fcpu:
                why += (
                    f". The floor's server CPU, {fcpu:.2f} ms per transfer, caps its one core at {1000 / fcpu:.0f} "
                    f"tx/s even with unlimited client CPU (its server core was at "
                    f"{fbest['server_core_util'] * 100:.0f}%, its clients' core at "
                    f"{fbest['client_core_util'] * 100:.0f}%)"
                )
        else:
            why += "; no framework floor measured (--no-peer) to hold that against"
        why += f". The cryptography alone would allow {worst['crypto_bound_tx_per_s']:.0f} tx/s"
        out.append(
            {
                "what": f"{proto} p99 < {P99_TARGET_MS:.0f} ms at {clients} clients",
                "met": all(r["p99_ms"] < P99_TARGET_MS for r in at_top) and top >= clients,
                "detail": detail,
                "needed_tx_per_s": needed,
                "floor_best_tx_per_s": fbest["tx_per_s"] if fbest else None,
                "floor_server_cpu_ms_per_tx": fcpu,
                "feasible": feasible,
                "why": why,
            }
        )
        ess = [r for r in essential_results if r["protocol"] == proto and r["transfers"]]
        out.append(_cpu_target(proto, rows, floor, fcpu, _pooled_server_cpu_ms(ess)))
        best = {}
        for r in rows:
            if r["variant"] not in best or r["ratio"] > best[r["variant"]]["ratio"]:
                best[r["variant"]] = r
        why = (
            "a server doing the floor's work plus the cryptography and nothing else would run at most at "
            "min(the floor's best tx/s, 1000 / (crypto ms + the floor's server CPU ms)); times crypto ms / 1000, "
            "that is the best ratio possible here"
        )
        feasible = None
        limits: dict[str, float] = {}
        if fbest is not None and fcpu:
            for name, r in best.items():
                cap = min(fbest["tx_per_s"], 1000 / (r["crypto_ms_per_tx"] + fcpu))
                limits[name] = round(cap * r["crypto_ms_per_tx"] / 1000, 3)
            feasible = all(x >= RATIO_TARGET for x in limits.values())
            why += ": " + ", ".join(
                f"{r['key']}/{r['workload_key']} min({fbest['tx_per_s']:.0f}, 1000 / ({r['crypto_ms_per_tx']:.2f} + "
                f"{fcpu:.2f})) x {r['crypto_ms_per_tx']:.2f} / 1000 = {limits[name]:.2f}"
                for name, r in best.items()
            )
        elif floor:
            why += "; the framework floor's server CPU per transfer was too small to read (too few transfers)"
        else:
            why += "; no framework floor measured (--no-peer)"
        out.append(
            {
                "what": f"{proto} throughput >= {RATIO_TARGET} x crypto-alone bound",
                "met": all(r["ratio"] >= RATIO_TARGET for r in best.values()),
                "detail": ", ".join(
                    f"{r['key']}/{r['workload_key']} best {r['ratio']:.2f} "
                    f"({r['tx_per_s']:.0f} of {r['crypto_bound_tx_per_s']:.0f} tx/s at {r['clients']} clients)"
                    for r in best.values()
                ),
                "best_ratio_possible": limits or None,
                "feasible": feasible,
                "why": why,
            }
        )
    return out


def _cpu_target(
    proto: str,
    rows: Sequence[dict[str, Any]],
    floor: Sequence[dict[str, Any]],
    fcpu: float | None,
    ecpu: float | None = None,
) -> dict[str, Any]:
    """Server CPU per transfer within CPU_X_FLOOR_TARGET x the framework floor's (pooled over levels);
    feasible when the essential-work peer (``ecpu``, pooled) is within it itself."""
    kb = _pooled_server_cpu_ms(rows)
    what = f"{proto} server CPU per transfer <= {CPU_X_FLOOR_TARGET:g} x the framework floor's"
    if kb is None or not fcpu:
        return {
            "what": what,
            "met": False,
            "detail": "not measured (no framework floor: --no-peer, or too few transfers)",
            "x_floor": None,
            "feasible": None,
            "why": "needs the framework floor measured in the same run",
        }
    x = kb / fcpu
    feasible: bool | None = None
    why = "the stage table says where the rest goes; the cryptography alone is listed above"
    essential_x_floor = None
    if ecpu:
        essential_x_floor = round(ecpu / fcpu, 2)
        feasible = ecpu / fcpu <= CPU_X_FLOOR_TARGET
        why = (
            f"{feasibility_line(ecpu / fcpu)}: bench/essential_app.py, the same stack doing only the work "
            f"no correct broker can skip, took {ecpu:.2f} ms per transfer; keybroker is {kb / ecpu:.2f} x that. "
            + why
        )
    elif proto == "/kbs/v1":
        why = "no essential-work peer measured (--no-essential) to hold it against; " + why
    return {
        "what": what,
        "met": x <= CPU_X_FLOOR_TARGET,
        "detail": f"{kb:.2f} ms vs the floor's {fcpu:.2f} ms: {x:.2f} x (pooled over {len(rows)} levels)",
        "x_floor": round(x, 2),
        "essential_x_floor": essential_x_floor,
        "feasible": feasible,
        "why": why,
    }


# --- scaling: measured vs Little's law -------------------------------------------------------------


def scaling(rows: Sequence[dict[str, Any]], cores: int) -> list[dict[str, Any]]:
    """Each deployment beside the single process at the same variant and clients, and the model.

    Little's law for the server: transfers in service = throughput x CPU time per transfer, and N busy
    processes on N cores hold at most N, so N processes do at most N / (CPU per transfer) tx/s: the
    ``model`` column, from the single process's measured server CPU per transfer. On this machine the
    clients (HTTP and quote making) and PostgreSQL share the same cores, so it also reads ``machine
    model`` = cores / (server + client + database CPU per transfer), the most the whole run could do
    here with every core busy. Other users of the machine take some of them: ``free model`` puts the
    CPUs they left (CPUs less their CPU seconds per second during that level) in place of all.
    """
    out = []
    for r in rows:
        if not r["transfers"]:
            continue
        base = next(
            (
                b
                for b in rows
                if b["variant"] == r["variant"]
                and b["clients"] == r["clients"]
                and b["workers"] == 1
                and b["replicas"] == 1
                and b["transfers"]
            ),
            None,
        )
        n = r["workers"] * r["replicas"]
        model = machine = free = None
        free_cpus = round(max(0.0, cores - r["other_cpu_s"] / r["seconds"]), 2) if r["seconds"] else None
        if base is not None and base["server_cpu_ms_per_tx"] > 0:
            total_ms = base["server_cpu_ms_per_tx"] + base["client_cpu_ms_per_tx"] + base["db_cpu_ms_per_tx"]
            model = round(n * 1000 / base["server_cpu_ms_per_tx"], 1)
            machine = round(min(model, cores * 1000 / total_ms), 1)
            if free_cpus is not None:
                free = round(min(model, free_cpus * 1000 / total_ms), 1)
        out.append(
            {
                "variant": r["variant"],
                "protocol": r["protocol"],
                "clients": r["clients"],
                "deployment": r["deployment"],
                "processes": n,
                "tx_per_s": r["tx_per_s"],
                "speedup": round(r["tx_per_s"] / base["tx_per_s"], 3) if base and base["tx_per_s"] else None,
                "server_cpu_ms_per_tx": r["server_cpu_ms_per_tx"],
                "client_cpu_ms_per_tx": r["client_cpu_ms_per_tx"],
                "db_cpu_ms_per_tx": r["db_cpu_ms_per_tx"],
                "server_cores_used": r["server_core_util"],
                "model_tx_per_s": model,
                "machine_model_tx_per_s": machine,
                "vs_model": round(r["tx_per_s"] / model, 3) if model else None,
                "vs_machine_model": round(r["tx_per_s"] / machine, 3) if machine else None,
                "free_cpus": free_cpus,
                "free_model_tx_per_s": free,
                "vs_free_model": round(r["tx_per_s"] / free, 3) if free else None,
            }
        )
    return out


def print_scaling(points: Sequence[dict[str, Any]], cores: int) -> None:
    print()
    print(f"scaling: throughput by server processes, measured vs Little's law ({cores} CPUs)")
    head = (
        f"{'variant':<16}{'clients':>7}{'deploy':>7}{'procs':>6}{'tx/s':>8}{'x 1w':>6}{'srv ms/tx':>10}"
        f"{'cli ms/tx':>10}{'db ms/tx':>9}{'srv cores':>10}{'model':>8}{'vs':>6}{'machine':>9}{'vs':>6}"
        f"{'free cpus':>10}{'free':>6}{'vs':>6}"
    )
    print(head)
    print("-" * len(head))
    for p in points:
        print(
            f"{p['variant']:<16}{p['clients']:>7}{p['deployment']:>7}{p['processes']:>6}"
            f"{_fmt(p['tx_per_s'], '.1f'):>8}{_fmt(p['speedup'], '.2f'):>6}"
            f"{_fmt(p['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(p['client_cpu_ms_per_tx'], '.2f'):>10}"
            f"{_fmt(p['db_cpu_ms_per_tx'], '.2f'):>9}{_fmt(p['server_cores_used'], '.2f'):>10}{_fmt(p['model_tx_per_s'], '.0f'):>8}"
            f"{_fmt(p['vs_model'], '.2f'):>6}{_fmt(p['machine_model_tx_per_s'], '.0f'):>9}"
            f"{_fmt(p['vs_machine_model'], '.2f'):>6}{_fmt(p['free_cpus'], '.2f'):>10}"
            f"{_fmt(p['free_model_tx_per_s'], '.0f'):>6}{_fmt(p['vs_free_model'], '.2f'):>6}"
        )
    print()
    for line in (
        "model = processes x 1000 / the single process's server CPU ms per transfer (Little's law: N busy",
        "processes on N cores complete at most N / CPU-per-transfer); vs = measured / model. machine = the",
        f"most this machine's {cores} CPUs allow with the clients and PostgreSQL on them too: min(model,",
        f"{cores} x 1000 / (server + client + db CPU ms per transfer of the single process)). db: PostgreSQL's",
        "processes. srv cores: the server's CPU seconds per second (all its processes). x 1w: tx/s / the",
        "single process's at the same clients. free cpus: the CPUs less what other users of the machine took",
        "during the level (CPU seconds per second); free = the machine model on those alone.",
    ):
        print("  " + line)
