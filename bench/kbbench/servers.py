"""The servers under test and their set-up.

``keybroker serve --dev`` is started as the test suite starts it (``tests.helpers.server.Server``: a
process group of its own, stopped by group, ready once ``/readyz`` answers 200), pinned to the
server's CPUs, from a :class:`ServerSpec`. The framework floor (``bench/floor_app.py``) and the
essential work (``bench/essential_app.py``) are started the same way (``tests.helpers.procs``). All
expose :meth:`pids`, the processes whose CPU counts.

A spec names a number of replicas and of worker processes per replica. One process runs on SQLite
(``serve --dev``). More run on a throwaway PostgreSQL (``tests.helpers.postgres``, as the tests
start it): ``serve --dev --database ... --workers N`` (one process group: the supervisor and its
workers), or N replicas as an operator runs them (``tests.helpers.cluster``: initialised once, each
unsealed with the shares, the simulator's root trusted and its collateral imported; docs/ha.md).
Both at once would need an auto-unseal seal for every worker: refused.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import essential_app  # bench/ is on the path (transfer.py, soak.py)
import httpx
from tests.helpers import cluster, postgres, procs
from tests.helpers.postgres import free_port
from tests.helpers.server import Server as KeybrokerProcess

from kbbench import ROOT
from kbbench.flows import Target
from keybroker.api.services import DEV_PKI_DIR
from keybroker.tee import sim

BIN = Path(sys.executable).parent
#: the /kbs/v0 resource repository the set-up creates
RESOURCE_REPO = "bench"
#: what the benchmark sets in the server's environment: per-stage CPU accounting (keybroker.stages)
STAGES_ENV = {"KEYBROKER_BENCH_STAGES": "1"}


def ssl_context(ca: Path | str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def pin(cpus: set[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class ServerSpec:
    """How keybroker is deployed for a run."""

    #: uvicorn worker processes per replica (``keybroker serve --workers``)
    workers: int = 1
    #: replicas on one database (PostgreSQL when more than one)
    replicas: int = 1
    #: PostgreSQL even for one process: a scaling run's 1-worker point, on the database its others use
    postgres: bool = False

    @property
    def on_postgres(self) -> bool:
        return self.postgres or self.workers > 1 or self.replicas > 1

    @property
    def processes(self) -> int:
        """The processes serving requests (a ``--workers`` supervisor only supervises)."""
        return self.workers * self.replicas

    def check(self) -> None:
        if self.workers < 1 or self.replicas < 1:
            raise SystemExit("--workers and --replicas take numbers of at least 1")
        if self.workers > 1 and self.replicas > 1:
            raise SystemExit(
                "--workers above 1 with --replicas above 1: each worker must unseal itself (an auto-unseal "
                "seal, docs/ha.md), and the benchmark's replicas are unsealed with shares; use one or the other"
            )

    def describe(self) -> str:
        procs_ = "1 process (1 uvicorn worker)" if self.workers == 1 else f"{self.workers} uvicorn workers"
        what = procs_ if self.replicas == 1 else f"{self.replicas} replicas x {procs_}"
        return what + (" on PostgreSQL" if self.on_postgres else " on SQLite")

    def label(self) -> str:
        """Short: ``1w``, ``2w``, ``2r`` (the tables' deployment column)."""
        return f"{self.replicas}r" if self.replicas > 1 else f"{self.workers}w"


class _BenchCluster(cluster.Cluster):
    """:class:`tests.helpers.cluster.Cluster` whose replicas are pinned and get the benchmark's environment."""

    def __init__(self, base: Path, database: str, cpus: set[int] | None, env: dict[str, str] | None) -> None:
        super().__init__(base, database)
        self.cpus = cpus
        self.env = env

    def replica(self, index: int) -> KeybrokerProcess:
        server = super().replica(index)
        server.cpus, server.env = self.cpus, self.env
        return server


class Deployment:
    """The keybroker processes of one :class:`ServerSpec` (and its PostgreSQL when it needs one)."""

    name = "keybroker serve"

    def __init__(
        self, spec: ServerSpec, base: Path, cpus: set[int] | None, env: dict[str, str] | None = None
    ) -> None:
        spec.check()
        self.spec = spec
        self.base = base
        self.cpus = cpus
        self.env = env
        self.pg: postgres.PostgresServer | None = None
        self.database: str | None = None
        self.cluster: _BenchCluster | None = None
        self.replicas: list[KeybrokerProcess] = []

    @property
    def data_dir(self) -> Path:
        return self.replicas[0].data_dir

    @property
    def ca(self) -> Path:
        return self.replicas[0].ca

    @property
    def url(self) -> str:
        return self.replicas[0].url

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(r.url for r in self.replicas)

    @property
    def stage_urls(self) -> tuple[str, ...]:
        """Where the per-stage CPU totals can be read whole: each replica's ``/metrics`` counts its own
        process only, so with ``--workers`` above 1 (one socket, whichever worker accepts) none."""
        return self.urls if self.spec.workers == 1 else ()

    @property
    def log_paths(self) -> list[Path]:
        return [r.log_path for r in self.replicas if r.log_path is not None]

    def start(self) -> None:
        if not self.spec.on_postgres:
            self.replicas = [self._process(["--dev"])]
            self.replicas[0].start()
            return
        self.pg = postgres.start()
        if self.pg is None:
            raise SystemExit(
                "--workers / --replicas need PostgreSQL's binaries (none found: make system-deps)"
            )
        self.database = self.pg.create_database("kb_bench")
        if self.spec.replicas > 1:
            self.cluster = _BenchCluster(self.base / "cluster", self.database, self.cpus, self.env)
            self.replicas = self.cluster.replicas  # filled as they start: stop() finds them on failure
            self.cluster.start(self.spec.replicas)
            return
        server = self._process(["--dev", "--database", self.database, "--workers", str(self.spec.workers)])
        self.replicas = [server]
        server.start()
        if self.spec.workers > 1:
            self._wait_for_workers(server)

    def _process(self, extra: list[str]) -> KeybrokerProcess:
        return KeybrokerProcess(
            self.base / "data", extra=extra, cpus=self.cpus, ready_path="/readyz", env=self.env
        )

    def _wait_for_workers(self, server: KeybrokerProcess, timeout: float = 90) -> None:
        """Until every worker process runs (``/readyz`` answered from one; the others may still be
        building their services) and each answers: fresh connections land on either."""
        assert server.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.workers(server)) >= self.spec.workers:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{self.spec.workers} workers did not start:\n{server.log()}")
        ok = 0
        while ok < 4 * self.spec.workers and time.monotonic() < deadline:
            try:
                r = httpx.get(server.url + "/readyz", verify=ssl_context(server.ca), timeout=5)
                ok = ok + 1 if r.status_code == 200 else 0
            except httpx.TransportError:
                ok = 0
            time.sleep(0.1)

    @staticmethod
    def workers(server: KeybrokerProcess) -> list[int]:
        """The worker processes of a ``--workers`` server (multiprocessing's spawned children)."""
        if server.proc is None:
            return []
        found = []
        for pid in procs.members(server.proc.pid):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        return found

    def stop(self) -> None:
        for r in reversed(self.replicas):
            r.stop()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def pids(self) -> list[int]:
        """Every live process of every replica (each is a process group: ``--workers``' supervisor
        and its workers)."""
        return [pid for r in self.replicas if r.proc is not None for pid in procs.members(r.proc.pid)]

    def db_pids(self) -> list[int]:
        """PostgreSQL's processes (postmaster, backends, writers): CPU a transfer costs on this machine
        beside the server's own; none on SQLite (in the server's processes)."""
        return self.pg.processes() if self.pg is not None else []

    def pid_groups(self) -> list[list[int]]:
        """:meth:`pids` per replica."""
        return [procs.members(r.proc.pid) if r.proc is not None else [] for r in self.replicas]

    def main_pid(self) -> int:
        proc = self.replicas[0].proc
        assert proc is not None
        return proc.pid

    def admin_token(self) -> str:
        """A *:* token for the set-up: the cluster's from its init, else ``keybroker token create``."""
        if self.cluster is not None:
            return self.cluster.admin_token
        return mint_admin_token(self.data_dir, ["--database", self.database] if self.database else [])

    def pki(self) -> sim.DevPki:
        """The simulator's PKI the servers trust (``--dev``'s own, or the cluster's trusted root)."""
        if self.cluster is not None:
            assert self.cluster.pki is not None
            return self.cluster.pki
        return sim.DevPki.load(self.data_dir / DEV_PKI_DIR)


class FloorServer:
    """The peer: ``bench/floor_app.py`` under uvicorn with keybroker's TLS certificate and key (the data
    dir's), serving ``responses`` as its fixed answers."""

    name = "the framework floor (bench/floor_app.py)"

    def __init__(self, data_dir: Path, cpus: set[int] | None, responses: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.cpus = cpus
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / "floor.log"
        self.responses_path = data_dir.parent / "floor-responses.json"
        self.responses_path.write_text(json.dumps(responses, indent=2))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def ca(self) -> Path:
        return self.data_dir / "ca" / "ca.pem"

    @property
    def stage_urls(self) -> tuple[str, ...]:
        return ()

    @property
    def log_paths(self) -> list[Path]:
        return [self.log_path]

    def command(self) -> list[str]:
        tls = self.data_dir / "tls"
        cmd = [sys.executable, str(ROOT / "bench" / "floor_app.py"), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--certfile", str(tls / "server.pem")]
        return cmd + ["--keyfile", str(tls / "server-key.pem"), "--responses", str(self.responses_path)]

    def start(self) -> None:
        cmd = self.command()
        cpus = self.cpus
        with open(self.log_path, "ab") as log:
            self.proc = procs.spawn(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=(lambda: pin(cpus)) if cpus else None,  # noqa: PLW1509 - pins the CPU only
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n" + self.log_path.read_text(errors="replace"))
            try:
                if (
                    httpx.get(self.url + "/healthz", verify=ssl_context(self.ca), timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
        self.proc = None

    def pids(self) -> list[int]:
        return procs.members(self.proc.pid) if self.proc is not None else []

    def pid_groups(self) -> list[list[int]]:
        return [self.pids()]

    def db_pids(self) -> list[int]:
        return []

    def main_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class EssentialServer(FloorServer):
    """The essential-work peer: ``bench/essential_app.py`` under uvicorn as the floor is (keybroker's TLS
    certificate and key, pinned to the same CPU), trusting the dev PKI keybroker trusts (its root and
    collateral), its nonces and audit chain in ``database``: a SQLite file beside keybroker's data dir,
    or a database of keybroker's PostgreSQL server when keybroker runs on one."""

    name = "the essential work (bench/essential_app.py)"
    #: the keys it releases ("aes" | "rsa" -> key id), as :attr:`Target.key_ids`
    key_ids = essential_app.KEY_IDS

    def __init__(
        self,
        data_dir: Path,
        cpus: set[int] | None,
        pki_dir: Path,
        tee: str,
        database: str | None = None,
        *,
        threads: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.cpus = cpus
        self.port = free_port()
        self.proc = None
        self.log_path = data_dir.parent / "essential.log"
        self.pki_dir = pki_dir
        self.tee = tee
        self.database = database or str(data_dir.parent / "essential.db")
        self.threads = threads

    def command(self) -> list[str]:
        tls = self.data_dir / "tls"
        cmd = [sys.executable, str(ROOT / "bench" / "essential_app.py"), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--certfile", str(tls / "server.pem")]
        cmd += ["--keyfile", str(tls / "server-key.pem"), "--dev-pki", str(self.pki_dir)]
        cmd += ["--database", self.database, "--tee", self.tee]
        return cmd + (["--threads"] if self.threads else [])


Servers = Deployment | FloorServer


# --- set-up through the admin API ----------------------------------------------------------------


def mint_admin_token(data_dir: Path, extra: Sequence[str] = ()) -> str:
    """A *:* token for the set-up, issued (and recorded) as an operator would: ``keybroker token create``."""
    r = subprocess.run(
        [str(BIN / "keybroker"), "token", "create", "--data-dir", str(data_dir), *extra]
        + ["--subject", "bench-admin", "--permissions", "*:*", "--ttl", "2h"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"set-up: keybroker token create: {r.stderr.strip()}")
    return r.stdout.strip()


def set_up(server: Deployment, tee: str, aes_secret: bytes) -> Target:
    """A policy admitting simulated evidence, an imported AES-256 key and a generated RSA-3072 key under
    it, and a /kbs/v0 resource serving each (through replica 0; the others share its database)."""
    token = server.admin_token()
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=ssl_context(server.ca), headers=h, timeout=60) as c:

        def ok(r: httpx.Response, what: str) -> httpx.Response:
            if r.status_code not in (200, 201, 204):
                raise RuntimeError(f"set-up: {what}: HTTP {r.status_code} {r.text[:500]}")
            return r

        pid = ok(c.post("/kbs/v1/key-transfer-policies", json=sim.sim_policy(tee)), "policy").json()["id"]
        aes = {"algorithm": "AES", "key_length": 256, "key_string": base64.b64encode(aes_secret).decode()}
        rsa_key = {"algorithm": "RSA", "key_length": 3072}
        ids = {
            name: ok(
                c.post("/kbs/v1/keys", json={"key_information": info, "transfer_policy_id": pid}),
                f"{name} key",
            ).json()["key_information"]["id"]
            for name, info in (("aes", aes), ("rsa", rsa_key))
        }
        resources = {}
        for k, kid in ids.items():
            path = f"{RESOURCE_REPO}/key/{k}"
            ok(c.post(f"/kbs/v0/resource/{path}", json={"key_id": kid}), f"resource {path}")
            ok(c.post(f"/kbs/v0/resource-policy/{path}", json={"transfer_policy_id": pid}), "resource policy")
            resources[k] = path
    return Target(server.urls, str(server.ca), tee, ids, resources)


def scrape(urls: Sequence[str], ca: Path | str, path: str = "/metrics") -> list[str]:
    """The text ``path`` answers on each of ``urls``."""
    out = []
    for url in urls:
        with httpx.Client(base_url=url, verify=ssl_context(ca), timeout=30) as c:
            out.append(c.get(path).text)
    return out
