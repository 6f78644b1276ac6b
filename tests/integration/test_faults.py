"""Database faults under load end in 503 and self-recovery, never in 500.

A real ``keybroker serve --dev`` on its own PostgreSQL server, under a light load of admin calls,
``/sys/v1/seal-status`` and ``/kbs/v1`` transfers (simulated TDX evidence), while the database is
(a) stopped (``pg_ctl stop``) for about 5 s and started again on the same port, and (b) hung
(every PostgreSQL process SIGSTOPped) for longer than the statement timeout, then resumed.

Before: every database-backed call answered 500 "Internal error", with a traceback logged per
request, and a hung database held requests for as long as it was hung. Now: every failure is a 503
``Backend unavailable`` naming the database with ``Retry-After``, answered within the configured
bounds; calls succeed again within seconds of the database's return, by themselves; the audit chain
verifies; and the server logs one line when the outage starts and one when it ends.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import create_engine, text
from tests.api.test_transfer_v1 import TDX_SIM_POLICY
from tests.helpers import postgres
from tests.helpers.server import Server, keybroker

from keybroker.keys import binding
from keybroker.tee import sim

#: The server's statement timeout in these tests (the default is 5 s): the client-side deadline of a
#: round trip is 1 s more, connecting is bounded by connect_timeout.
STATEMENT_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 2
#: The longest a request may take while the database is down or hung: a pool wait or a round trip,
#: then a reconnection, with room for a loaded 2-core machine.
WORST_CASE_S = 15.0
#: How soon after the database is back every kind of call must succeed again.
RECOVERY_S = 10.0


@dataclass
class Call:
    kind: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer (a transport error)
    title: str = ""
    detail: str = ""
    retry_after: str | None = None


@dataclass
class Load:
    """A few clients calling in a loop until stopped; every answer recorded."""

    server: Server
    token: str
    key_id: str
    pki: sim.DevPki
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, kind: str, started: float, r: httpx.Response | None) -> httpx.Response | None:
        call = Call(kind, started, time.monotonic(), 0 if r is None else r.status_code)
        if r is not None and r.status_code >= 400:
            body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
            call.title, call.detail = body.get("title", ""), body.get("detail", "")
            call.retry_after = r.headers.get("retry-after")
        with self.lock:
            self.calls.append(call)
        return r

    def _call(self, kind: str, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        started = time.monotonic()
        try:
            r = send()
        except httpx.TransportError:
            r = None
        return self._record(kind, started, r)

    def _loop(self, body: Callable[[httpx.Client], None], token: bool) -> None:
        with self.server.client(self.token if token else None) as c:
            while not self.stop.is_set():
                body(c)
                time.sleep(0.05)

    def _admin(self, c: httpx.Client) -> None:
        self._call("key.retrieve", lambda: c.get(f"/kbs/v1/keys/{self.key_id}"))
        self._call("policy.create", lambda: c.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY))
        self._call("seal-status", lambda: c.get("/sys/v1/seal-status"))

    def _transfer(self, c: httpx.Client) -> None:
        url = f"/kbs/v1/keys/{self.key_id}/transfer"
        r = self._call("challenge", lambda: c.post(url))
        if r is None or r.status_code != 200:
            return
        nonce = base64.b64decode(r.json()["nonce"]["val"])
        quote = sim.tdx_quote(self.pki, report_data=binding.v1_report_data(nonce, SPKI))
        body = {
            "quote": base64.b64encode(quote).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(SPKI).decode(),
        }
        self._call("transfer", lambda: c.post(url, json=body, headers={"Attestation-Type": "TDX"}))

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


_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@dataclass
class Broker:
    pg: postgres.PostgresServer
    url: str
    server: Server
    token: str
    key_id: str
    pki: sim.DevPki


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    pg = postgres.start()
    if pg is None:
        pytest.skip("PostgreSQL binaries not installed")
    try:
        url = pg.create_database("kb_faults") + (
            f"?options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT_S}s&connect_timeout={CONNECT_TIMEOUT_S}"
        )
        data_dir = tmp_path / "data"
        server = Server(data_dir, extra=["--dev", "--database", url]).start()
        try:
            r = keybroker(
                "token", "create", "--data-dir", str(data_dir), "--database", url, "--permissions", "*:*"
            )
            assert r.returncode == 0, r.stderr
            token = r.stdout.strip()
            with server.client(token) as admin:
                pid = admin.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY).json()["id"]
                r2 = admin.post(
                    "/kbs/v1/keys",
                    json={
                        "key_information": {"algorithm": "AES", "key_length": 256},
                        "transfer_policy_id": pid,
                    },
                )
                assert r2.status_code == 201, r2.text
                key_id = r2.json()["key_information"]["id"]
            pki = sim.DevPki.load_or_create(data_dir / "dev-pki")
            yield Broker(pg, url, server, token, key_id, pki)
        finally:
            server.stop()
    finally:
        pg.stop()


def _under_load(broker: Broker, fault: Callable[[], tuple[float, float]]) -> tuple[list[Call], float, float]:
    """Load before, during and after ``fault`` (which returns when the database went away and came
    back, monotonic); returns every call and those two instants."""
    load = Load(broker.server, broker.token, broker.key_id, broker.pki)
    load.start()
    time.sleep(3)
    down, up = fault()
    time.sleep(RECOVERY_S + 3)
    return load.finish(), down, up


def _check(broker: Broker, calls: list[Call], down: float, up: float) -> dict[str, int]:
    by_status: dict[int, int] = {}
    for c in calls:
        by_status[c.status] = by_status.get(c.status, 0) + 1
    assert by_status.get(500, 0) == 0, [c for c in calls if c.status == 500][:5]
    assert by_status.get(0, 0) == 0, "requests without an HTTP answer"
    failures = [c for c in calls if c.status >= 400]
    assert failures, "the fault did not reach the service: nothing failed"
    for c in failures:
        assert c.status == 503, c
        assert c.title == "Backend unavailable", c
        assert c.detail.startswith("the database is unavailable: "), c
        assert c.retry_after is not None and c.retry_after.isdigit() and int(c.retry_after) >= 1, c
        # refused only while the database was away (a request started just before may end after)
        assert down - WORST_CASE_S <= c.started and c.ended <= up + WORST_CASE_S, c
        assert c.ended - c.started <= WORST_CASE_S, c
    kinds = {c.kind for c in calls}
    assert kinds == {"key.retrieve", "policy.create", "seal-status", "challenge", "transfer"}
    for kind in kinds:
        # before the fault it worked; within RECOVERY_S of the database's return it works again, and
        # from then on nothing fails
        mine = [c for c in calls if c.kind == kind]
        assert any(c.status < 400 and c.ended < down for c in mine), kind
        back = [c for c in mine if c.started > up + RECOVERY_S]
        assert back and all(c.status < 400 for c in back), (kind, back[:3])
    return by_status


def _check_log(server: Server, outages: int) -> None:
    log = server.log()
    assert "Traceback" not in log
    assert "Internal error" not in log and "unexpected " not in log
    assert log.count("database unavailable: ") == outages, log[-3000:]
    assert log.count("database available again after") == outages, log[-3000:]
    assert "could not write the audit record" not in log
    assert "audit checkpoint failed" not in log


def _check_audit(broker: Broker) -> tuple[int, int]:
    """``keybroker audit verify`` passes; returns (nonces used, key.transfer records) for the key."""
    time.sleep(2)  # a checkpoint covers the last records
    r = keybroker("audit", "verify", "--data-dir", str(broker.server.data_dir), "--database", broker.url)
    assert r.returncode == 0, r.stdout + r.stderr
    engine = create_engine(broker.url)
    try:
        with engine.connect() as conn:
            used = conn.execute(
                text("SELECT count(*) FROM nonces WHERE subject = :k AND used_at IS NOT NULL"),
                {"k": broker.key_id},
            ).scalar_one()
            audited = conn.execute(
                text("SELECT count(*) FROM audit_log WHERE action = 'key.transfer' AND object_id = :k"),
                {"k": broker.key_id},
            ).scalar_one()
    finally:
        engine.dispose()
    return int(used), int(audited)


def test_database_stopped_and_started_again(broker: Broker, record_property: Callable[..., None]) -> None:
    def fault() -> tuple[float, float]:
        broker.pg.shut_down("fast")
        down = time.monotonic()
        time.sleep(5)
        broker.pg.start_again()
        return down, time.monotonic()

    calls, down, up = _under_load(broker, fault)
    by_status = _check(broker, calls, down, up)
    _check_log(broker.server, outages=1)
    used, audited = _check_audit(broker)
    record_property("statuses", by_status)
    record_property("nonces_used_without_audited_outcome", used - audited)
    print(f"stopped: statuses {by_status}; nonces used {used}, key.transfer records {audited}")
    assert used == audited  # every nonce spent has its audited outcome, and the other way round


def test_database_hung_longer_than_the_statement_timeout(
    broker: Broker, record_property: Callable[..., None]
) -> None:
    def fault() -> tuple[float, float]:
        pids = broker.pg.freeze()
        try:
            down = time.monotonic()
            time.sleep(3 * (STATEMENT_TIMEOUT_S + 1))
        finally:
            broker.pg.thaw(pids)
        return down, time.monotonic()

    calls, down, up = _under_load(broker, fault)
    by_status = _check(broker, calls, down, up)
    _check_log(broker.server, outages=1)
    used, audited = _check_audit(broker)
    record_property("statuses", by_status)
    record_property("nonces_used_without_audited_outcome", used - audited)
    longest = max(c.ended - c.started for c in calls)
    print(
        f"hung: statuses {by_status}; longest {longest:.1f} s; nonces used {used}, key.transfer records {audited}"
    )
    assert used == audited
