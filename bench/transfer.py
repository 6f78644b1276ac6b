"""Attested key transfer end to end: /kbs/v1 and /kbs/v0 against a real server, beside its framework floor.

Run: ``.venv/bin/python bench/transfer.py [--quick] [--tee tdx|sgx] [--no-peer] [--no-essential] [--profile]
[--workers 1,2] [--replicas N]`` (``make bench``).

A real ``keybroker serve --dev`` (HTTPS, SQLite in a temporary data dir, one uvicorn process) is
started on a free loopback port. A key-transfer policy admitting simulated evidence, the keys
(AES-256 imported, RSA-3072 generated) and /kbs/v0 resources serving them are created through the
admin API. Then, for 1, 8 and 32 concurrent clients, each client (one process with one httpx
client, HTTP keep-alive, its TLS connection opened before the clock starts) repeats a whole
transfer until the level's budget (transfers or seconds) is spent:

- /kbs/v1: POST .../transfer (empty: nonce) -> simulated quote -> POST .../transfer (2 requests);
- /kbs/v0: POST /auth -> simulated quote -> POST /attest -> GET /resource (3 requests).

The quotes bind the server's nonce, so they are made during the run, by the clients. CPU placement
(2 cores): the server process is pinned to the first CPU, every client process (HTTP and quote
generation) to the others; server and client CPU time per transfer are read from /proc and reported,
as is CPU used by anything else on the machine during the level. With one CPU they all share it.

The peer (the primary comparison): the framework floor. In the same run, ``bench/floor_app.py`` -- a
minimal FastAPI app whose endpoints only read the body and answer fixed JSON (no database, no
cryptography, no validation) -- is served by uvicorn exactly as ``keybroker serve`` is served (the
same TLS certificate and key from the data dir, ``log_config=None``, ``access_log=False``, one
process, httptools/uvloop picked by uvicorn), pinned to the same CPU. Its fixed answers are the real
server's, captured during the warm-up. For each protocol a peer "transfer" makes the same requests
(2 for v1, 3 for v0) with bodies of the same size and shape, through the same client machinery
(processes, pinning, keep-alive, budget and time limit) at the same client levels, just before that
protocol's first keybroker variant (the other server idles meanwhile). Its quote is a real one made
once before the run, so the peer's clients make no quotes (their CPU per transfer is lower by that). ``vs floor = keybroker tx/s / peer tx/s`` at the same level and
``cpu vs floor = peer server CPU / keybroker server CPU`` per transfer: the share of the best any
app on this HTTPS stack could do that keybroker reaches, and the share of its server CPU that the
stack itself takes. ``--no-peer`` skips it.

The essential work (the lower bound): in the same run, ``bench/essential_app.py`` -- the same stack
serving /kbs/v1's challenge and transfer with only the work no correct key broker can skip (the
nonce's non-durable insert; Verifier.verify with REPORTDATA = SHA-512(nonce || user_data), the policy's
comparisons, the SecL wrap, an Ed25519-signed audit record and one durable transaction spending the
nonce with it) -- is served as the floor is, pinned to the same CPU, and driven by keybroker's own
client flow (quotes made per transfer), once it has refused a tampered quote and a replayed nonce. The
report sets the server CPU per transfer of the floor, the essential work and keybroker side by side
(keybroker x floor, keybroker x essential, essential x floor) and says whether the 2 x floor target is
feasible here at all: "essential work alone is E x the floor here". ``--no-essential`` skips it.

The cryptography alone (informative) is measured in this process, pinned to the server's CPU while
the server is idle, best of a few rounds: quote verification with warm collateral (``verify_quote``),
the wrap (SecL: RSA-OAEP-256 + AES-GCM; /kbs/v0: the JWE), and for /kbs/v0 the EAR issued at attest
(the session's own EAR is not verified again at resource; EAR verify is listed for bearer tokens). ``ratio = tx/s / (1 / crypto seconds per transfer)`` is the share of
one core that the necessary cryptography would fill at the measured throughput.

Targets: the issue asked for ratio >= 0.5 and p99 < 50 ms at 32 clients. The report says whether
they are met and, from the numbers measured in the run, whether they can be on this stack here: with
N closed-loop clients, mean latency = N / throughput (Little's law), so p99 < 50 ms at 32 clients
needs more than 640 tx/s, which is set against the peer's measured throughput; the best ratio possible
is crypto ms / 1000 x min(the peer's best tx/s, 1000 / (crypto ms + the peer's server CPU ms per
transfer)). The peer's clients share the client CPU(s) as keybroker's do; where their core is nearly
full the peer is client-bound, and the report says so.

Where keybroker's server CPU goes: the server runs with ``KEYBROKER_BENCH_STAGES=1``
(``keybroker.stages``), so its ``/metrics`` count the thread CPU of each request-path stage (parse,
verify, policy, database, audit, wrap, json); the report lists them per transfer beside the event-loop
thread's CPU (TLS, HTTP, routing, middleware) and the floor's, and the target the issue set: server CPU
per transfer within 2 x the framework floor's.

Results go to ``.bench/transfer.json`` (with both servers' logs beside it); the exit status is 3 when
some transfers failed. ``--profile`` samples the server with py-spy (``pip install py-spy``; not a
project dependency) at the highest concurrency of each variant and prints where its time went.

More server processes: ``--workers N`` runs ``keybroker serve --dev --workers N`` on a throwaway
PostgreSQL (``tests/helpers/postgres.py``); its CPU is the whole process group's (supervisor and
workers). ``--replicas N`` runs N replicas on one PostgreSQL as an operator does (docs/ha.md:
initialised once, each unsealed with the shares, the simulator's root trusted and its collateral
imported; ``tests/helpers/cluster.py``), client i on replica i mod N; the report gives each replica's
CPU per transfer. Both above 1 at once is refused (every worker would need an auto-unseal seal).
Several values (``--workers 1,2``) are measured one after another in the same run, each on a fresh
deployment and database, all on PostgreSQL, and all with the server and the clients on every CPU
(no pinning: keep the clients few, they make the quotes); the cryptography alone and the peer are
measured with the first. The scaling report then sets each beside the single process at the same
level, and beside Little's law: N busy processes complete at most N / (server CPU per transfer)
transfers a second, from the single process's measured CPU (``model``), and on this machine, whose
CPUs the clients share, at most CPUs / (server + client CPU per transfer) (``machine``). With
``--workers`` above 1 the per-stage table is left out: each worker's ``/metrics`` counts only its
own process, and a request reaches whichever worker accepts it.

The parts live in ``bench/kbbench/`` (flows, servers, cpu, crypto, profile, driver, report);
``bench/soak.py`` reuses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kbbench.driver import main  # noqa: E402 - after the path that finds it

if __name__ == "__main__":
    sys.exit(main(doc=__doc__ or ""))
