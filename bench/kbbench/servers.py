"""The servers under test and their set-up.

``keybroker serve --dev`` is started as the test suite starts it (``tests.helpers.server.Server``: a
process group of its own, stopped by group, ready once ``/readyz`` answers 200), pinned to the
server's CPUs, from a :class:`ServerSpec`. The framework floor (``bench/floor_app.py``) is started
the same way (``tests.helpers.procs``). Both expose :meth:`pids`, the processes whose CPU counts.

A spec names a number of replicas and of worker processes per replica. This version of
``keybroker serve`` runs one process on SQLite: :meth:`ServerSpec.check` refuses more, and the place
to add them is :func:`start_keybroker` (replicas on one PostgreSQL, ``serve --workers N``).
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

import httpx
from tests.helpers import procs
from tests.helpers.postgres import free_port
from tests.helpers.server import Server as KeybrokerProcess

from kbbench import ROOT
from kbbench.flows import Target
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

    def check(self) -> None:
        if self.workers != 1 or self.replicas != 1:
            raise SystemExit(
                "this keybroker serves one process on SQLite: --workers and --replicas need "
                "'keybroker serve --workers' and replicas that join on PostgreSQL"
            )

    def describe(self) -> str:
        procs_ = "1 process (1 uvicorn worker)" if self.workers == 1 else f"{self.workers} uvicorn workers"
        return procs_ if self.replicas == 1 else f"{self.replicas} replicas x {procs_}"


class Deployment:
    """The keybroker processes of one :class:`ServerSpec`: replica 0 first (it creates the data dir)."""

    name = "keybroker serve"

    def __init__(
        self, spec: ServerSpec, base: Path, cpus: set[int] | None, env: dict[str, str] | None = None
    ) -> None:
        spec.check()
        self.spec = spec
        self.replicas = [
            KeybrokerProcess(
                base / (f"data-{i}" if i else "data"),
                extra=["--dev"],
                cpus=cpus,
                ready_path="/readyz",
                env=env,
            )
            for i in range(spec.replicas)
        ]

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
    def log_paths(self) -> list[Path]:
        return [r.log_path for r in self.replicas if r.log_path is not None]

    def start(self) -> None:
        for r in self.replicas:
            r.start()

    def stop(self) -> None:
        for r in reversed(self.replicas):
            r.stop()

    def pids(self) -> list[int]:
        """Every live process of every replica (uvicorn's workers too)."""
        return [pid for r in self.replicas if r.proc is not None for pid in procs.members(r.proc.pid)]

    def main_pid(self) -> int:
        proc = self.replicas[0].proc
        assert proc is not None
        return proc.pid


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
    def log_paths(self) -> list[Path]:
        return [self.log_path]

    def start(self) -> None:
        tls = self.data_dir / "tls"
        cmd = [sys.executable, str(ROOT / "bench" / "floor_app.py"), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--certfile", str(tls / "server.pem")]
        cmd += ["--keyfile", str(tls / "server-key.pem"), "--responses", str(self.responses_path)]
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

    def main_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


Servers = Deployment | FloorServer


# --- set-up through the admin API ----------------------------------------------------------------


def sim_policy(tee: str) -> dict[str, Any]:
    if tee == "tdx":
        return {
            "attestation_type": ["TDX"],
            "tdx": {
                "attributes": {
                    "mrsignerseam": [sim.DEFAULT_MRSIGNERSEAM.hex()],
                    "mrseam": [sim.DEFAULT_MRSEAM.hex()],
                    "seamsvn": sim.DEFAULT_SEAMSVN,
                    "mrtd": [sim.DEFAULT_MRTD.hex()],
                    "rtmr0": sim.DEFAULT_RTMRS[0].hex(),
                    "enforce_tcb_upto_date": True,
                }
            },
            "allow_simulated": True,
        }
    return {
        "attestation_type": ["SGX"],
        "sgx": {
            "attributes": {
                "mrsigner": [sim.DEFAULT_MRSIGNER.hex()],
                "isvprodid": [7],
                "mrenclave": [sim.DEFAULT_MRENCLAVE.hex()],
                "isvsvn": 2,
                "enforce_tcb_upto_date": True,
            }
        },
        "allow_simulated": True,
    }


def mint_admin_token(data_dir: Path) -> str:
    """A *:* token for the set-up, issued (and recorded) as an operator would: ``keybroker token create``."""
    r = subprocess.run(
        [str(BIN / "keybroker"), "token", "create", "--data-dir", str(data_dir)]
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
    token = mint_admin_token(server.data_dir)
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=ssl_context(server.ca), headers=h, timeout=60) as c:

        def ok(r: httpx.Response, what: str) -> httpx.Response:
            if r.status_code not in (200, 201, 204):
                raise RuntimeError(f"set-up: {what}: HTTP {r.status_code} {r.text[:500]}")
            return r

        pid = ok(c.post("/kbs/v1/key-transfer-policies", json=sim_policy(tee)), "policy").json()["id"]
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
