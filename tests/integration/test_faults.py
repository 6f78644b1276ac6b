"""The fault table: two production replicas on one PostgreSQL under load, with real faults.

Two ``keybroker serve`` replicas (real processes, each in its own process group) on one PostgreSQL
server, initialized and unsealed as an operator does (``tests/helpers/cluster.py``), under a light
load: ``/kbs/v1`` transfers whose challenge is asked of one replica and whose evidence is sent to
the other, each success replayed on the first one (it must be refused); keys created (each ``201``
is an acknowledged key); keys read; ``/sys/v1/seal-status``; the routes that came with the console,
SEV-SNP and TPM: a console page with a signed-in session (``/ui/keys``), the TPM AK list
(``/kbs/v1/tpm/aks``) and a KDS read (``/vcek/v1/Milan/cert_chain``, not cached: 404). Clients go
to the replicas in turn;
a refused connection (nothing listens) sends the request to the other replica, as a load balancer
does, since it reached no server. The faults:

* a replica killed with SIGKILL, then started again and unseal;
* PostgreSQL stopped (``pg_ctl stop``) for about 5 s and started again on the same port;
* PostgreSQL hung (every process SIGSTOPped) for longer than the statement timeout, then resumed;
* the key store backend (OpenBao, the ``vault`` key store) stopped and started again.

Each test counts, and requires to be 0: acknowledged keys lost, nonces used twice (a replay
released, or one nonce in two releases), audit chain breaks (``keybroker audit verify``), 500s, and
nonces spent without an audited outcome (or outcomes without their nonce). Failures are allowed
only where the fault is: requests in flight on the killed replica (no answer), and 503
``Backend unavailable`` naming the database (or the key store), with ``Retry-After``, while it is
away; within seconds of its return everything succeeds again, by itself. Each replica logs one line
when an outage starts and one when it ends, and no traceback.

Before (issue 15): a database outage answered 500 "Internal error" with a traceback per request,
a hung database held requests for as long as it was hung, and a transfer could spend its nonce
without an audited outcome.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, text
from tests.api.test_transfer_v1 import TDX_SIM_POLICY
from tests.helpers import cluster, openbao, postgres, procs
from tests.helpers.server import Server, keybroker

from keybroker.tee import sim
from keybroker.ui import security
from keybroker.wire import binding

#: The replicas' statement timeout in these tests (the default is 5 s): the client-side deadline of
#: a round trip is 1 s more, connecting is bounded by connect_timeout.
STATEMENT_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 2
URL_QUERY = f"?options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT_S}s&connect_timeout={CONNECT_TIMEOUT_S}"
#: The longest a request may take while a backend is down or hung: a pool wait or a round trip,
#: then a reconnection, with room for a loaded 2-core machine.
WORST_CASE_S = 15.0
#: How soon after the backend is back every kind of call must succeed again.
RECOVERY_S = 10.0
KINDS = {
    "challenge",
    "transfer",
    "replay",
    "key.create",
    "key.retrieve",
    "seal-status",
    "console",
    "tpm.aks",
    "kds",
}
#: What a call of each kind answers when it works, at most (a replay works when it is refused, a
#: KDS read of a chain nobody cached works when it says so).
WORKED = {"replay": 403, "kds": 404}
_HTML_TITLE = re.compile(r"<h1>(.*?)</h1>", re.S)
_HTML_ERROR = re.compile(r'<p class="error" role="alert">(.*?)</p>', re.S)

_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@dataclass
class Call:
    kind: str
    replica: int
    started: float
    ended: float
    status: int  # 0: no HTTP answer (the connection broke with the request in flight)
    title: str = ""
    detail: str = ""
    retry_after: str | None = None
    nonce: str = ""


class NoReplica(Exception):
    """Every replica refused the connection."""


@dataclass
class Load:
    """A few clients calling the replicas in turn until stopped; every answer recorded."""

    replicas: list[Server]
    token: str
    key_id: str
    policy_id: str
    pki: sim.DevPki
    #: The console session's cookie secret (a signed-in person's, see :func:`_console_session`).
    console: str
    calls: list[Call] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)  # keys created (201)
    #: Replicas that refused a connection, out of rotation until :meth:`rejoin`.
    out: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    turn: Iterator[int] = field(default_factory=itertools.count)

    def live(self) -> list[int]:
        with self.lock:
            return [i for i in range(len(self.replicas)) if i not in self.out]

    def rejoin(self, index: int) -> None:
        with self.lock:
            self.out.discard(index)

    def _send(
        self, clients: list[httpx.Client], prefer: int, request: Callable[[httpx.Client], httpx.Response]
    ) -> tuple[int, httpx.Response | None, float]:
        """Send to replica ``prefer``, else the next live one; a refused connection reached no
        server, so the next replica gets the request."""
        while True:
            live = self.live()
            if not live:
                raise NoReplica
            index = prefer if prefer in live else live[0]
            started = time.monotonic()
            try:
                return index, request(clients[index]), started
            except httpx.ConnectError:
                with self.lock:
                    self.out.add(index)
            except httpx.TransportError:
                return index, None, started  # the connection broke with the request in flight

    def _call(
        self,
        kind: str,
        clients: list[httpx.Client],
        prefer: int,
        request: Callable[[httpx.Client], httpx.Response],
        nonce: str = "",
    ) -> tuple[int, httpx.Response | None]:
        index, r, started = self._send(clients, prefer, request)
        call = Call(kind, index, started, time.monotonic(), 0 if r is None else r.status_code, nonce=nonce)
        if r is not None and r.status_code >= 400:
            kind_of = r.headers.get("content-type", "")
            if kind_of.startswith("text/html"):  # the console's error page
                title, error = _HTML_TITLE.search(r.text), _HTML_ERROR.search(r.text)
                call.title = html.unescape(title.group(1)) if title else ""
                call.detail = html.unescape(error.group(1)) if error else ""
            else:
                body = r.json() if kind_of.endswith("json") else {}
                call.title, call.detail = body.get("title", ""), body.get("detail", "")
            call.retry_after = r.headers.get("retry-after")
        with self.lock:
            self.calls.append(call)
        return index, r

    def _clients(self, token: bool) -> list[httpx.Client]:
        return [s.client(self.token if token else None) for s in self.replicas]

    def _loop(self, body: Callable[[list[httpx.Client]], None], token: bool) -> None:
        clients = self._clients(token)
        try:
            while not self.stop.is_set():
                try:
                    body(clients)
                except NoReplica:
                    pass
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def _admin(self, clients: list[httpx.Client]) -> None:
        i = next(self.turn) % len(clients)
        info = {
            "key_information": {"algorithm": "AES", "key_length": 256},
            "transfer_policy_id": self.policy_id,
        }
        _, r = self._call("key.create", clients, i, lambda c: c.post("/kbs/v1/keys", json=info))
        if r is not None and r.status_code == 201:
            with self.lock:
                self.acknowledged.append(r.json()["key_information"]["id"])
        self._call("key.retrieve", clients, i + 1, lambda c: c.get(f"/kbs/v1/keys/{self.key_id}"))
        self._call("seal-status", clients, i, lambda c: c.get("/sys/v1/seal-status"))
        self._call("tpm.aks", clients, i + 1, lambda c: c.get("/kbs/v1/tpm/aks"))
        self._call("kds", clients, i, lambda c: c.get("/vcek/v1/Milan/cert_chain"))
        cookie = {"Cookie": f"{security.SESSION_COOKIE}={self.console}"}
        self._call("console", clients, i + 1, lambda c: c.get("/ui/keys", headers=cookie))

    def _transfer(self, clients: list[httpx.Client]) -> None:
        url = f"/kbs/v1/keys/{self.key_id}/transfer"
        i = next(self.turn) % len(clients)
        asked, r = self._call("challenge", clients, i, lambda c: c.post(url))
        if r is None or r.status_code != 200:
            return
        nonce = base64.b64decode(r.json()["nonce"]["val"])
        quote = sim.tdx_quote(self.pki, report_data=binding.v1_report_data(nonce, SPKI))
        body = {
            "quote": base64.b64encode(quote).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        }
        tag = hashlib.sha256(nonce).hexdigest()

        def send(c: httpx.Client) -> httpx.Response:
            return c.post(url, json=body, headers={"Attestation-Type": "TDX"})

        # the evidence goes to the other replica; a success is replayed on the one that issued it
        _, r = self._call("transfer", clients, asked + 1, send, tag)
        if r is not None and r.status_code == 200:
            self._call("replay", clients, asked, send, tag)

    def start(self) -> None:
        for body, token in ((self._admin, True), (self._transfer, False), (self._transfer, False)):
            t = threading.Thread(target=self._loop, args=(body, token), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> list[Call]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client is stuck on a request"
        return list(self.calls)


@dataclass
class Fault:
    """When the fault began and ended (monotonic), and what its refusals must say."""

    down: float
    up: float
    backend: str = "database"
    #: A replica killed: requests in flight on it at ``down`` may get no answer.
    killed: int | None = None


@dataclass
class Broker:
    pg: postgres.PostgresServer
    cluster: cluster.Cluster
    key_id: str
    policy_id: str
    console: str

    @property
    def replicas(self) -> list[Server]:
        return self.cluster.replicas

    def load(self) -> Load:
        assert self.cluster.pki is not None
        return Load(
            self.replicas,
            self.cluster.admin_token,
            self.key_id,
            self.policy_id,
            self.cluster.pki,
            self.console,
        )


@pytest.fixture
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    if server is None:
        pytest.skip("PostgreSQL binaries not installed")
    yield server
    server.stop()


def _console_session(database: str) -> str:
    """A console session of a key admin, as an OpenID sign-in leaves it (production replicas have no
    dev login): the row keyed by the SHA-256 of the cookie's secret. Returns the secret."""
    secret = security.new_secret()
    now = datetime.now(UTC)
    engine = create_engine(database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO console_sessions (id, state, source, subject, roles, created_at, "
                    "last_seen_at, expires_at) VALUES (:id, 'active', 'oidc', 'alice', "
                    "CAST(:roles AS json), :now, :now, :end)"
                ),
                {
                    "id": security.secret_id(secret),
                    "roles": '["key-admin"]',
                    "now": now,
                    "end": now + timedelta(hours=1),
                },
            )
    finally:
        engine.dispose()
    return secret


def _broker(pg: postgres.PostgresServer, base: Path, **sections: dict[str, Any]) -> Iterator[Broker]:
    c = cluster.Cluster(base, pg.create_database("kb_faults") + URL_QUERY, sections)
    try:
        c.start(2)
        with c.replicas[0].client(c.admin_token) as admin:
            r = admin.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY)
            assert r.status_code == 201, r.text
            policy_id = r.json()["id"]
            r = admin.post(
                "/kbs/v1/keys",
                json={
                    "key_information": {"algorithm": "AES", "key_length": 256},
                    "transfer_policy_id": policy_id,
                },
            )
            assert r.status_code == 201, r.text
        yield Broker(pg, c, r.json()["key_information"]["id"], policy_id, _console_session(c.database))
    finally:
        c.stop()


@pytest.fixture
def broker(pg: postgres.PostgresServer, tmp_path: Path) -> Iterator[Broker]:
    yield from _broker(pg, tmp_path / "cluster")


def _under_load(broker: Broker, fault: Callable[[Load], Fault]) -> tuple[Load, list[Call], Fault]:
    load = broker.load()
    load.start()
    time.sleep(3)
    happened = fault(load)
    time.sleep(RECOVERY_S + 3)
    return load, load.finish(), happened


@dataclass
class Table:
    """The fault table's row for one fault (all must be 0 but the counts of calls)."""

    calls: int
    refused_503: int
    in_flight_lost: int
    status_500: int
    acknowledged_keys_lost: int
    nonces_reused: int
    chain_breaks: int
    nonces_without_outcome: int


def _check_calls(calls: list[Call], fault: Fault) -> None:
    kinds = {c.kind for c in calls}
    assert kinds == KINDS, kinds
    assert not [c for c in calls if c.status == 500][:5]
    for c in calls:
        if c.status == 0:  # no answer: only a request in flight on the replica killed
            assert fault.killed is not None and c.replica == fault.killed, c
            assert c.started <= fault.down + 0.5 and c.ended >= fault.down - 0.5, c
        elif c.kind == "replay":
            assert c.status in (403, 503), c
            if c.status == 403:
                assert "already used" in c.detail, c
        elif c.kind == "kds" and c.status == 404:
            assert c.title == "No cached collateral" and "Milan" in c.detail, c
        elif c.status >= 400:
            assert fault.killed is None, c  # the other replica answers everything
            assert c.status == 503, c
            assert c.title == "Backend unavailable", c
            if fault.backend == "database":
                assert c.detail.startswith("the database is unavailable: "), c
            else:
                assert f"the {fault.backend} " in c.detail, c
            assert c.retry_after is not None and c.retry_after.isdigit() and int(c.retry_after) >= 1, c
            # refused only while the backend was away (a request started just before may end after)
            assert fault.down - WORST_CASE_S <= c.started and c.ended <= fault.up + WORST_CASE_S, c
        assert c.ended - c.started <= WORST_CASE_S, c
    for kind in KINDS:
        # before the fault it worked; within RECOVERY_S of the backend's return it works again on
        # every replica, and from then on nothing fails
        mine = [c for c in calls if c.kind == kind]
        worked = WORKED.get(kind, 399)
        assert any(0 < c.status <= worked and c.ended < fault.down for c in mine), kind
        back = [c for c in mine if c.started > fault.up + RECOVERY_S]
        assert back and all(0 < c.status <= worked for c in back), (kind, back[:3])
    for replica in range(2):
        assert any(c.replica == replica and c.started > fault.up + RECOVERY_S for c in calls), replica


def _check_logs(broker: Broker, outages: int, fault: Fault) -> None:
    for i, server in enumerate(broker.replicas):
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        assert "Internal error" not in log and "unexpected " not in log
        assert "could not write the audit record" not in log
        assert "audit checkpoint failed" not in log
        if i != fault.killed:
            assert log.count("database unavailable: ") == outages, log[-3000:]
            assert log.count("database available again after") == outages, log[-3000:]


def _table(broker: Broker, load: Load, calls: list[Call]) -> Table:
    """Count what must not happen, from the clients' answers and the database."""
    live = next(s for i, s in enumerate(broker.replicas) if i not in load.out)
    with live.client(broker.cluster.admin_token) as admin:
        lost = sum(admin.get(f"/kbs/v1/keys/{k}").status_code != 200 for k in load.acknowledged)
    released = [c.nonce for c in calls if c.kind == "transfer" and c.status == 200]
    reused = (len(released) - len(set(released))) + sum(c.kind == "replay" and c.status == 200 for c in calls)
    time.sleep(2)  # a checkpoint covers the last records
    breaks = 0
    for server in broker.replicas:
        r = keybroker(
            "audit", "verify", "--data-dir", str(server.data_dir), "--config", str(broker.cluster.config)
        )
        breaks += r.returncode != 0
        assert r.returncode == 0, r.stdout + r.stderr
    engine = create_engine(broker.cluster.database)
    try:
        with engine.connect() as conn:
            used = conn.execute(
                text("SELECT count(*) FROM nonces WHERE subject = :k AND used_at IS NOT NULL"),
                {"k": broker.key_id},
            ).scalar_one()
            # every outcome of a transfer but the refused replays spent one nonce
            outcomes = conn.execute(
                text(
                    "SELECT count(*) FROM audit_log WHERE action = 'key.transfer' AND object_id = :k "
                    "AND (reason IS NULL OR reason NOT LIKE '%already used (replay)%')"
                ),
                {"k": broker.key_id},
            ).scalar_one()
    finally:
        engine.dispose()
    return Table(
        calls=len(calls),
        refused_503=sum(c.status == 503 for c in calls),
        in_flight_lost=sum(c.status == 0 for c in calls),
        status_500=sum(c.status == 500 for c in calls),
        acknowledged_keys_lost=lost,
        nonces_reused=reused,
        chain_breaks=breaks,
        nonces_without_outcome=abs(int(used) - int(outcomes)),
    )


def _report(name: str, table: Table, record_property: Callable[..., None]) -> None:
    record_property("fault_table", table.__dict__)
    print(f"\nfault table: {name}: {table.__dict__}")
    assert table.status_500 == 0
    assert table.acknowledged_keys_lost == 0
    assert table.nonces_reused == 0
    assert table.chain_breaks == 0
    assert table.nonces_without_outcome == 0


def test_replica_killed_under_load(broker: Broker, record_property: Callable[..., None]) -> None:
    victim = broker.replicas[0]

    def fault(load: Load) -> Fault:
        assert victim.proc is not None
        procs.stop(victim.proc, signal.SIGKILL)
        down = time.monotonic()
        time.sleep(2)
        with load.lock:  # out of rotation (if no client found it refusing yet), as a health check does
            load.out.add(0)
        # started again on its port and data dir: sealed until unsealed, then back in rotation
        victim.proc = None
        victim.start()
        broker.cluster.unseal(victim)
        load.rejoin(0)
        return Fault(down, time.monotonic(), killed=0)

    load, calls, f = _under_load(broker, fault)
    _check_calls(calls, f)
    assert sum(c.status == 0 for c in calls) <= 3  # at most one request in flight per client
    _check_logs(broker, outages=0, fault=f)
    _report("replica kill -9", _table(broker, load, calls), record_property)


def _database_gauges(server: Server) -> tuple[float, float]:
    """(keybroker_database_up, keybroker_database_outages_total) from the replica's /metrics."""
    with server.client() as c:
        text_ = c.get("/metrics").text
    found = dict(re.findall(r"^(keybroker_database_up|keybroker_database_outages_total) (\S+)$", text_, re.M))
    return float(found["keybroker_database_up"]), float(found["keybroker_database_outages_total"])


def _new_routes(broker: Broker) -> list[tuple[str, int, dict[str, str], str]]:
    """A console page, the TPM AK list and a KDS read asked of each replica: (what, status, headers,
    body)."""
    cookie = {"Cookie": f"{security.SESSION_COOKIE}={broker.console}"}
    answers = []
    for server in broker.replicas:
        with server.client(broker.cluster.admin_token) as c:
            for what, r in (
                ("console", c.get("/ui/keys", headers=cookie)),
                ("tpm.aks", c.get("/kbs/v1/tpm/aks")),
                ("kds", c.get("/vcek/v1/Milan/cert_chain")),
            ):
                answers.append((what, r.status_code, dict(r.headers), r.text))
    return answers


def test_database_stopped_and_started_again(broker: Broker, record_property: Callable[..., None]) -> None:
    during: list[tuple[float, float]] = []
    new_routes: list[tuple[str, int, dict[str, str], str]] = []

    def fault(load: Load) -> Fault:
        broker.pg.shut_down("fast")
        down = time.monotonic()
        time.sleep(3)
        during.append(_database_gauges(broker.replicas[0]))  # /metrics answers, without the database
        new_routes.extend(_new_routes(broker))
        time.sleep(2)
        broker.pg.start_again()
        return Fault(down, time.monotonic())

    assert _database_gauges(broker.replicas[0]) == (1.0, 0.0)
    load, calls, f = _under_load(broker, fault)
    assert during == [(0.0, 1.0)]
    assert _database_gauges(broker.replicas[0]) == (1.0, 1.0)
    # the console, TPM and KDS routes during the outage: 503 Backend unavailable naming the
    # database, with Retry-After; the console's as its own error page, with its security headers
    assert [(what, status) for what, status, _, _ in new_routes] == [
        ("console", 503),
        ("tpm.aks", 503),
        ("kds", 503),
    ] * 2, new_routes
    for what, _, headers, body in new_routes:
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1, what
        assert "Backend unavailable" in body and "the database is unavailable: " in body, (what, body)
        if what == "console":
            assert headers["content-type"].startswith("text/html"), headers
            assert headers["content-security-policy"].startswith("default-src 'none'"), headers
        else:
            assert headers["content-type"] == "application/problem+json", headers
    _check_calls(calls, f)
    assert any(c.status == 503 for c in calls), "the fault did not reach the service"
    _check_logs(broker, outages=1, fault=f)
    _report("PostgreSQL stopped 5 s", _table(broker, load, calls), record_property)


def test_database_hung_longer_than_the_statement_timeout(
    broker: Broker, record_property: Callable[..., None]
) -> None:
    def fault(load: Load) -> Fault:
        pids = broker.pg.freeze()
        try:
            down = time.monotonic()
            time.sleep(3 * (STATEMENT_TIMEOUT_S + 1))
        finally:
            broker.pg.thaw(pids)
        return Fault(down, time.monotonic())

    load, calls, f = _under_load(broker, fault)
    _check_calls(calls, f)
    assert any(c.status == 503 for c in calls), "the fault did not reach the service"
    _check_logs(broker, outages=1, fault=f)
    longest = max(c.ended - c.started for c in calls)
    print(f"hung: longest call {longest:.1f} s")
    _report("PostgreSQL SIGSTOP 9 s", _table(broker, load, calls), record_property)


@pytest.fixture
def vault_broker(pg: postgres.PostgresServer, tmp_path: Path) -> Iterator[tuple[Broker, openbao.BaoServer]]:
    bao = openbao.file_tls(tmp_path / "bao")
    try:
        bao.enable_kv2("keybroker")
        keystore = {
            "type": "vault",
            "address": bao.address,
            "ca_file": str(bao.tls_ca),
            "timeout_seconds": 2,
            "auth": {"method": "token", "token": bao.root_token},
        }
        for b in _broker(pg, tmp_path / "cluster", keystore=keystore):
            yield b, bao
    finally:
        bao.stop()


def test_key_store_backend_down(
    vault_broker: tuple[Broker, openbao.BaoServer], record_property: Callable[..., None]
) -> None:
    broker, bao = vault_broker

    def fault(load: Load) -> Fault:
        bao.stop()
        down = time.monotonic()
        time.sleep(5)
        bao.start()
        return Fault(down, time.monotonic(), backend="vault")

    load, calls, f = _under_load(broker, fault)
    _check_calls(calls, f)
    assert any(c.status == 503 for c in calls), "the fault did not reach the service"
    _check_logs(broker, outages=0, fault=f)
    _report("key store (OpenBao) stopped 5 s", _table(broker, load, calls), record_property)
