"""``keybroker serve --workers N``: N processes on one listening socket, on PostgreSQL (real
processes: the server in its own process group, stopped by it).

Refused in one line, exit 2, before anything is created: on SQLite (one writer, one file), and
with unseal shares (a share sent to the shared listener lands in whichever worker accepts it).
On PostgreSQL with ``--dev``: both workers serve (each spends CPU on the load of transfers whose
challenge and evidence go out on separate connections, which the kernel hands to either), a worker killed with SIGKILL is replaced and only its in-flight requests
fail, the audit chain verifies, and SIGTERM stops them all.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.api.test_transfer_v1 import TDX_SIM_POLICY
from tests.helpers import postgres, procs
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker

from keybroker.tee import sim
from keybroker.wire import binding

_WORKLOAD = rsa.generate_private_key(public_exponent=65537, key_size=3072)
SPKI = _WORKLOAD.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    if server is None:
        pytest.skip("PostgreSQL binaries not installed")
    yield server
    server.stop()


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = keybroker(
        "serve", "--dev", "--workers", "2", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}"
    )
    assert r.returncode == 2
    assert "--workers 2 needs PostgreSQL" in _one_line(r.stderr)
    assert not data.exists()  # nothing created


def test_workers_with_unseal_shares_are_refused_in_one_line(
    pg: postgres.PostgresServer, tmp_path: Path
) -> None:
    url = pg.create_database("kb_workers_shamir")
    r = keybroker(
        "serve",
        "--workers",
        "2",
        "--database",
        url,
        "--data-dir",
        str(tmp_path / "d"),
        "--listen",
        f"127.0.0.1:{free_port()}",
    )
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "each worker to unseal itself" in line and "auto-unseal" in line and "docs/ha.md" in line
    assert not (tmp_path / "d").exists()


def _cpu_ticks(pid: int) -> int:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _workers(server: Server) -> list[int]:
    assert server.proc is not None
    return sorted(p for p in procs.members(server.proc.pid) if p != server.proc.pid and _is_worker(p))


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def test_two_workers_on_postgresql(pg: postgres.PostgresServer, tmp_path: Path) -> None:
    url = pg.create_database("kb_workers")
    data = tmp_path / "data"
    server = Server(data, extra=["--dev", "--database", url, "--workers", "2"]).start()
    try:
        deadline = time.monotonic() + 60
        while len(_workers(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _workers(server)
        assert len(workers) == 2, procs.members(server.proc.pid if server.proc else 0)
        r = keybroker("token", "create", "--data-dir", str(data), "--database", url, "--permissions", "*:*")
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip()
        with server.client(token) as admin:
            pid = admin.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY).json()["id"]
            r2 = admin.post(
                "/kbs/v1/keys",
                json={"key_information": {"algorithm": "AES", "key_length": 256}, "transfer_policy_id": pid},
            )
            assert r2.status_code == 201, r2.text
            key_id = r2.json()["key_information"]["id"]
        pki = sim.DevPki.load(data / "dev-pki")
        url_t = f"/kbs/v1/keys/{key_id}/transfer"
        results: list[tuple[float, float, int]] = []
        stop = threading.Event()
        lock = threading.Lock()

        def transfers() -> None:
            while not stop.is_set():
                started = time.monotonic()
                status = 0
                try:
                    # a new connection per request: the kernel hands each to either worker
                    with server.client() as c:
                        nonce = base64.b64decode(c.post(url_t).json()["nonce"]["val"])
                    quote = sim.tdx_quote(pki, report_data=binding.v1_report_data(nonce, SPKI))
                    body = {
                        "quote": base64.b64encode(quote).decode(),
                        "nonce": {"val": base64.b64encode(nonce).decode()},
                        "user_data": base64.b64encode(SPKI).decode(),
                    }
                    with server.client() as c:
                        status = c.post(url_t, json=body, headers={"Attestation-Type": "TDX"}).status_code
                except httpx.TransportError:
                    pass
                with lock:
                    results.append((started, time.monotonic(), status))

        before = {p: _cpu_ticks(p) for p in workers}
        threads = [threading.Thread(target=transfers, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(8)
        spent = {p: _cpu_ticks(p) - before[p] for p in workers}
        # kill one worker: the supervisor starts another; only requests in flight on it may fail
        victim = workers[0]
        procs_before = set(_workers(server))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(12)
        stop.set()
        for t in threads:
            t.join(60)
        replaced = set(_workers(server)) - procs_before
        assert len(_workers(server)) == 2 and replaced, (_workers(server), procs_before)

        assert all(ticks > 20 for ticks in spent.values()), spent  # both workers served the load
        ok = [r for r in results if r[2] == 200]
        failed = [r for r in results if r[2] != 200]
        assert len(ok) > 20, len(ok)
        for started, ended, status in failed:
            assert status == 0 and started <= killed <= ended + 0.5, (started, ended, status, killed)
        assert len(failed) <= 3  # at most the one request each client had in flight
        assert any(r[2] == 200 and r[0] > killed + 2 for r in results)  # served after the kill
        time.sleep(2)
        r = keybroker("audit", "verify", "--data-dir", str(data), "--database", url)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    assert '"stopped_at": null' not in (data / "server.json").read_text()
