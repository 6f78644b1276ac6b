"""Attested key transfer end to end: /kbs/v1 and /kbs/v0 against a real server, beside its framework floor.

Run: ``.venv/bin/python bench/transfer.py [--quick] [--tee tdx|sgx] [--no-peer] [--profile]``
(``make bench``).

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

Results go to ``.bench/transfer.json`` (with both servers' logs beside it); the exit status is 3 when
some transfers failed. ``--profile`` samples the server with py-spy (``pip install py-spy``; not a
project dependency) at the highest concurrency of each variant and prints where its time went.
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
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.api.services import DEV_PKI_DIR
from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input
from keybroker.attestation.ear import Keyring, issue_ear, verify_ear
from keybroker.client import unwrap
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.dcap.verify import verify_quote
from keybroker.tee.verifier import Verifier
from keybroker.wire import binding
from keybroker.wire.envelope import software_wrap

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / ".bench" / "transfer.json"
LEVELS = (1, 8, 32)
P99_TARGET_MS = 50.0
RATIO_TARGET = 0.5
#: a client core busier than this means the level was (near) client-bound
CLIENT_BOUND = 0.85
RESOURCE_REPO = "bench"
#: Exit status when some transfers failed (the numbers count only the ones that succeeded).
EXIT_FAILED_TRANSFERS = 3


# --- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    protocol: str  # "v1" | "v0"
    key: str  # "aes" (AES-256) | "rsa" (RSA-3072)
    workload: str  # "rsa3072" | "p256": the workload's ephemeral key
    primary: bool = False

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.key}/{self.workload}"

    @property
    def key_label(self) -> str:
        return {"aes": "AES-256", "rsa": "RSA-3072"}[self.key]

    @property
    def workload_label(self) -> str:
        return {"rsa3072": "RSA-3072", "p256": "EC P-256"}[self.workload]


VARIANTS = (
    Variant("v1", "aes", "rsa3072", primary=True),
    Variant("v1", "rsa", "rsa3072"),
    Variant("v0", "aes", "rsa3072", primary=True),
    Variant("v0", "rsa", "rsa3072"),
    Variant("v0", "aes", "p256"),
)


def crypto_parts(v: Variant) -> list[str]:
    """The crypto components one transfer of ``v`` needs on the server (names in :func:`crypto_costs`)."""
    if v.protocol == "v1":
        return ["quote verification", f"SecL wrap {v.key_label}"]
    jwe = "RSA-OAEP-256" if v.workload == "rsa3072" else "ECDH-ES+A256KW"
    # The session's own EAR is not verified again at /resource (keybroker.attestation.ear.VerifiedEarCache:
    # it signed those very bytes); a bearer EAR from elsewhere would add "EAR verify (ES384)".
    return ["quote verification", "EAR issue (ES384)", f"JWE {jwe} {v.key_label}"]


@dataclass
class Workload:
    """The client side's ephemeral keys (one set for every client: the server does not care)."""

    rsa_priv: rsa.RSAPrivateKey
    ec_priv: ec.EllipticCurvePrivateKey
    spki: bytes = b""
    spki_b64: str = ""
    rsa_jwk: dict[str, object] = field(default_factory=dict)
    ec_jwk: dict[str, object] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> Workload:
        w = cls(
            rsa.generate_private_key(public_exponent=65537, key_size=3072),
            ec.generate_private_key(ec.SECP256R1()),
        )
        w.spki = w.rsa_priv.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        w.spki_b64 = base64.b64encode(w.spki).decode()
        w.rsa_jwk = wrap.public_jwk(w.rsa_priv.public_key())
        w.ec_jwk = wrap.public_jwk(w.ec_priv.public_key())
        return w

    def jwk(self, kind: str) -> dict[str, object]:
        return self.rsa_jwk if kind == "rsa3072" else self.ec_jwk


@dataclass(frozen=True)
class Target:
    """What the clients talk to."""

    url: str
    ca: str
    tee: str
    key_ids: dict[str, str]  # "aes" | "rsa" -> key id
    resources: dict[str, str]  # "aes" | "rsa" -> repository/type/tag
    #: the peer only: "v1" | "v0" -> a real quote (base64) made once, sent by every peer transfer
    quotes: dict[str, str] = field(default_factory=dict)


class TransferFailed(Exception):
    pass


def make_quote(pki: sim.DevPki, tee: str, report_data: bytes) -> bytes:
    if tee == "tdx":
        return sim.tdx_quote(pki, report_data=report_data)
    return sim.sgx_quote(pki, report_data=report_data, isvprodid=7, isvsvn=2)


def _ok(r: httpx.Response, step: str) -> httpx.Response:
    if r.status_code != 200:
        raise TransferFailed(f"{step}: HTTP {r.status_code} {r.text[:300]}")
    return r


def transfer_v1(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """One /kbs/v1 transfer; returns the response body and the CPU seconds spent making the quote."""
    url = f"/kbs/v1/keys/{t.key_ids[v.key]}/transfer"
    r = _ok(c.post(url), "challenge")
    nonce_b64 = r.json()["nonce"]["val"]
    att = r.headers["Attestation-Type"]
    q0 = time.thread_time()
    quote = make_quote(pki, t.tee, binding.v1_report_data(base64.b64decode(nonce_b64), w.spki))
    qcpu = time.thread_time() - q0
    body = {"quote": base64.b64encode(quote).decode(), "nonce": {"val": nonce_b64}, "user_data": w.spki_b64}
    r = _ok(c.post(url, json=body, headers={"Attestation-Type": att}), "transfer")
    return r.json(), qcpu


def _v0_auth(c: httpx.Client, path: str, tee: str) -> tuple[str, dict[str, str]]:
    """KBS protocol auth: the nonce and the session cookie header."""
    r = _ok(c.post(path, json={"version": "0.4.0", "tee": tee, "extra-params": ""}), "auth")
    session = r.cookies.get("kbs-session-id")
    if not session:
        raise TransferFailed("auth: no kbs-session-id cookie")
    return r.json()["nonce"], {"Cookie": f"kbs-session-id={session}"}


def _v0_attest_body(tee: str, quote_b64: str, nonce: str, jwk: dict[str, object]) -> dict[str, Any]:
    """The attester's /attest body: runtime data and the quote as the CoCo attestation agent sends them."""
    primary: dict[str, Any] = {"quote": quote_b64}
    if tee == "tdx":
        primary["cc_eventlog"] = None
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }


def transfer_v0(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """One /kbs/v0 transfer (auth, attest, resource over the session cookie)."""
    nonce, cookie = _v0_auth(c, "/kbs/v0/auth", t.tee)
    jwk = w.jwk(v.workload)
    q0 = time.thread_time()
    quote = make_quote(pki, t.tee, binding.v0_report_data(nonce, jwk, "", "sha384"))
    qcpu = time.thread_time() - q0
    body = _v0_attest_body(t.tee, base64.b64encode(quote).decode(), nonce, jwk)
    _ok(c.post("/kbs/v0/attest", json=body, headers=cookie), "attest")
    r = _ok(c.get(f"/kbs/v0/resource/{t.resources[v.key]}", headers=cookie), "resource")
    return r.json(), qcpu


TRANSFER: dict[str, Callable[..., tuple[dict[str, Any], float]]] = {"v1": transfer_v1, "v0": transfer_v0}
REQUESTS = {"v1": 2, "v0": 3}


# The peer (bench/floor_app.py): the same requests, bodies of the same size and shape, a quote made once.


def peer_v1(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """A /kbs/v1 transfer's requests against the framework floor (no quote made: 0 quote CPU)."""
    r = _ok(c.post("/floor/nonce"), "nonce")
    nonce_b64 = r.json()["nonce"]["val"]
    att = r.headers["Attestation-Type"]
    body = {"quote": t.quotes["v1"], "nonce": {"val": nonce_b64}, "user_data": w.spki_b64}
    r = _ok(c.post("/floor/echo", json=body, headers={"Attestation-Type": att}), "echo")
    return r.json(), 0.0


def peer_v0(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """A /kbs/v0 transfer's requests against the framework floor."""
    nonce, cookie = _v0_auth(c, "/floor/auth", t.tee)
    body = _v0_attest_body(t.tee, t.quotes["v0"], nonce, w.jwk(v.workload))
    _ok(c.post("/floor/attest", json=body, headers=cookie), "attest")
    r = _ok(c.get("/floor/resource", headers=cookie), "resource")
    return r.json(), 0.0


PEER_TRANSFER: dict[str, Callable[..., tuple[dict[str, Any], float]]] = {"v1": peer_v1, "v0": peer_v0}
#: the real flow's responses, in order, -> the floor app's endpoint that answers them
PEER_ENDPOINTS = {"v1": ("nonce", "echo"), "v0": ("auth", "attest", "resource")}


def open_result(v: Variant, body: dict[str, Any], w: Workload) -> bytes:
    """The workload side: unwrap what the server sent (done on warm-up transfers only)."""
    if v.protocol == "v1":
        return unwrap.secl_unwrap(
            base64.b64decode(body["wrapped_key"]), base64.b64decode(body["wrapped_swk"]), w.rsa_priv
        )
    return unwrap.jwe_unwrap(body, w.rsa_priv if v.workload == "rsa3072" else w.ec_priv)


# --- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpus: set[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


class Server:
    """``keybroker serve --dev`` in a child process, stopped by pid."""

    name = "keybroker serve"
    log_name = "server.log"
    ready_path = "/readyz"

    def __init__(self, data_dir: Path, cpus: set[int] | None, wrapper: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.cpus = cpus
        self.wrapper = list(wrapper)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / self.log_name

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "ca" / "ca.pem"

    def command(self) -> list[str]:
        cmd = [str(BIN / "keybroker"), "serve", "--dev", "--data-dir", str(self.data_dir)]
        return cmd + ["--listen", f"127.0.0.1:{self.port}"]

    def start(self) -> None:
        cmd = self.command()
        cpus = self.cpus
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn only pins the CPU, before any thread
                self.wrapper + cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=(lambda: _pin(cpus)) if cpus else None,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n" + self.log())
            if self.ca.exists():
                try:
                    r = httpx.get(self.url + self.ready_path, verify=ssl_context(self.ca), timeout=2)
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready:\n" + self.log())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server process, all its threads."""
        return _proc_cpu(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class FloorServer(Server):
    """The peer: ``bench/floor_app.py`` under uvicorn with the keybroker server's TLS certificate and key
    (``keybroker serve`` made them in the data dir), serving ``responses`` as its fixed answers."""

    name = "the framework floor (bench/floor_app.py)"
    log_name = "floor.log"
    ready_path = "/healthz"

    def __init__(self, data_dir: Path, cpus: set[int] | None, responses: dict[str, Any]) -> None:
        super().__init__(data_dir, cpus)
        self.responses_path = data_dir.parent / "floor-responses.json"
        self.responses_path.write_text(json.dumps(responses, indent=2))

    def command(self) -> list[str]:
        tls = self.data_dir / "tls"
        return [
            sys.executable,
            str(ROOT / "bench" / "floor_app.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--certfile",
            str(tls / "server.pem"),
            "--keyfile",
            str(tls / "server-key.pem"),
            "--responses",
            str(self.responses_path),
        ]


def ssl_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> tuple[float, float]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _run_delays(pid: int) -> dict[str, int]:
    """Per thread: nanoseconds spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    out: dict[str, int] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[stat.parent.name] = int(stat.read_text().split()[1])
    return out


def _run_delay_between(before: dict[str, int], after: dict[str, int]) -> float:
    """Seconds of CPU waiting between two :func:`_run_delays` readings (threads that ended are lost)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def _machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    v = [int(x) for x in parts]
    return (sum(v[:8]) - v[3] - v[4]) / _TICK


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, fstype, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, fstype
    except OSError:
        pass
    return kind


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


def set_up(server: Server, tee: str, aes_secret: bytes) -> Target:
    token = mint_admin_token(server.data_dir)
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=ssl_context(server.ca), headers=h, timeout=60) as c:

        def ok(r: httpx.Response, what: str) -> httpx.Response:
            if r.status_code not in (200, 201, 204):
                raise RuntimeError(f"set-up: {what}: HTTP {r.status_code} {r.text[:500]}")
            return r

        pid = ok(c.post("/kbs/v1/key-transfer-policies", json=sim_policy(tee)), "policy").json()["id"]
        aes = {"algorithm": "AES", "key_length": 256, "key_string": base64.b64encode(aes_secret).decode()}
        key_ids = {
            "aes": ok(
                c.post("/kbs/v1/keys", json={"key_information": aes, "transfer_policy_id": pid}), "AES key"
            ),
            "rsa": ok(
                c.post(
                    "/kbs/v1/keys",
                    json={
                        "key_information": {"algorithm": "RSA", "key_length": 3072},
                        "transfer_policy_id": pid,
                    },
                ),
                "RSA key",
            ),
        }
        ids = {k: r.json()["key_information"]["id"] for k, r in key_ids.items()}
        resources = {}
        for k, kid in ids.items():
            path = f"{RESOURCE_REPO}/key/{k}"
            ok(c.post(f"/kbs/v0/resource/{path}", json={"key_id": kid}), f"resource {path}")
            ok(c.post(f"/kbs/v0/resource-policy/{path}", json={"transfer_policy_id": pid}), "resource policy")
            resources[k] = path
    return Target(server.url, str(server.ca), tee, ids, resources)


# --- the clients ---------------------------------------------------------------------------------


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
    server_core_util: float
    #: runnable but waiting for its CPU (taken by another process): a noisy machine shows here
    server_cpu_wait_ms_per_tx: float
    client_cpu_ms_per_tx: float
    client_quote_ms_per_tx: float
    client_core_util: float
    other_cpu_s: float
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
    first_errors: list[str] = field(default_factory=list)


def _client_main(
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
    peer: bool = False,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    _pin(cpus)
    fn = (PEER_TRANSFER if peer else TRANSFER)[v.protocol]
    lat: list[tuple[float, float]] = []
    errors: list[str] = []
    qcpu = 0.0
    cpu0 = 0.0
    try:
        with httpx.Client(base_url=t.url, verify=ssl_context(Path(t.ca)), timeout=60) as c:
            c.get("/healthz")  # the TLS handshake, outside the clock; later requests reuse the connection
            barrier.wait(timeout=120)
            c.get(
                "/healthz"
            )  # again, once all are connected: reconnects if the server's keep-alive timed out
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
    server: Server,
    t: Target,
    v: Variant,
    pki: sim.DevPki,
    w: Workload,
    clients: int,
    budget: int,
    seconds: float,
    client_cpus: set[int] | None,
    peer: bool = False,
) -> Level:
    """One level: ``clients`` client processes against ``server`` (the framework floor with ``peer``)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    counter = ctx.Value("i", 0)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_main,
            args=(t, v, pki, w, client_cpus, budget, seconds, barrier, counter, out, peer),
            daemon=True,
        )
        for _ in range(clients)
    ]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        barrier.wait(timeout=120)  # all connected
        barrier.wait(timeout=120)  # all connections fresh: go
        (usr0, sys0), busy0, wait0 = server.cpu_seconds(), _machine_busy(), _run_delays(server.pid)
        for _ in procs:
            results.append(out.get(timeout=seconds + 180))
        (usr1, sys1), busy1, wait1 = server.cpu_seconds(), _machine_busy(), _run_delays(server.pid)
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
    server_cpu = (usr1 - usr0) + (sys1 - sys0)
    return Level(
        variant=f"floor/{v.protocol}/{v.workload}" if peer else v.name,
        protocol=f"/kbs/{v.protocol}",
        key="-" if peer else v.key_label,
        workload_key=v.workload_label,
        clients=clients,
        transfers=n,
        errors=len(errors),
        seconds=round(window, 3),
        tx_per_s=round(n / window, 1) if n else 0.0,
        p50_ms=round(_pct(ms, 50), 2),
        p99_ms=round(_pct(ms, 99), 2),
        mean_ms=round(sum(ms) / n, 2) if n else float("nan"),
        max_ms=round(ms[-1], 2) if n else float("nan"),
        server_cpu_ms_per_tx=round(server_cpu / n * 1000, 2) if n else float("nan"),
        server_sys_ms_per_tx=round((sys1 - sys0) / n * 1000, 2) if n else float("nan"),
        server_core_util=round(server_cpu / window, 2) if n else float("nan"),
        server_cpu_wait_ms_per_tx=round(_run_delay_between(wait0, wait1) / n * 1000, 2)
        if n
        else float("nan"),
        client_cpu_ms_per_tx=round(client_cpu / n * 1000, 2) if n else float("nan"),
        client_quote_ms_per_tx=round(sum(r["qcpu"] for r in results) / n * 1000, 2) if n else float("nan"),
        client_core_util=round(client_cpu / window / max(1, len(client_cpus or ())), 2)
        if n
        else float("nan"),
        other_cpu_s=round(max(0.0, (busy1 - busy0) - server_cpu - client_cpu), 2),
        first_errors=[f"{k} (x{c})" for k, c in Counter(errors).most_common(3)],
    )


def peer_responses(captured: dict[str, list[httpx.Request | httpx.Response]]) -> dict[str, dict[str, Any]]:
    """The floor app's fixed answers: the real server's, per protocol in request order (see
    :data:`PEER_ENDPOINTS`), with the headers a client reads (the cookie's path made the floor's)."""
    out: dict[str, dict[str, Any]] = {}
    for proto, exchanges in captured.items():
        responses = [r for r in exchanges if isinstance(r, httpx.Response)]
        for name, r in zip(PEER_ENDPOINTS[proto], responses, strict=True):
            headers = {k: r.headers[k] for k in ("Attestation-Type", "Set-Cookie") if k in r.headers}
            if "Set-Cookie" in headers:
                headers["Set-Cookie"] = headers["Set-Cookie"].replace("Path=/kbs/v0", "Path=/floor")
            out[name] = {"body": r.text, "headers": headers}
    return out


def _sizes(exchanges: Sequence[httpx.Request | httpx.Response]) -> dict[str, list[int]]:
    """Body bytes of one transfer's requests and responses, in order."""
    return {
        "request_bytes": [len(x.content) for x in exchanges if isinstance(x, httpx.Request)],
        "response_bytes": [len(x.content) for x in exchanges if isinstance(x, httpx.Response)],
    }


def _compare_with_peer(level: Level, peer_results: Sequence[Level]) -> None:
    """Fill ``level``'s peer columns from the framework floor at the same protocol and level."""
    for p in peer_results:
        if p.protocol == level.protocol and p.clients == level.clients and p.transfers:
            level.peer_tx_per_s = p.tx_per_s
            level.peer_p50_ms = p.p50_ms
            level.peer_p99_ms = p.p99_ms
            level.peer_server_cpu_ms_per_tx = p.server_cpu_ms_per_tx
            level.vs_floor = round(level.tx_per_s / p.tx_per_s, 3)
            if level.transfers:
                level.cpu_vs_floor = round(p.server_cpu_ms_per_tx / level.server_cpu_ms_per_tx, 3)
            return


def request_floor(server: Server, n: int) -> float:
    """Server CPU milliseconds of the cheapest request it serves (GET /healthz over the same HTTPS
    keep-alive connection: TLS, HTTP, the app's middleware; no database, no crypto), one client."""
    with httpx.Client(base_url=server.url, verify=ssl_context(server.ca), timeout=60) as c:
        for _ in range(20):
            c.get("/healthz")
        (u0, s0) = server.cpu_seconds()
        for _ in range(n):
            c.get("/healthz")
        (u1, s1) = server.cpu_seconds()
    return round(((u1 - u0) + (s1 - s0)) / n * 1000, 3)


def sqlite_commit_ms(directory: Path, n: int = 100) -> float:
    """Wall milliseconds of one committed single-row transaction, SQLite WAL + synchronous=FULL as the
    server sets it up, on the data dir's file system (the fsync every server commit pays)."""
    path = directory / "commit-probe.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (x INTEGER)")
        start = time.perf_counter()
        for i in range(n):
            con.execute("BEGIN")
            con.execute("INSERT INTO t VALUES (?)", (i,))
            con.execute("COMMIT")
        return round((time.perf_counter() - start) / n * 1000, 3)
    finally:
        con.close()


# --- the cryptography alone ----------------------------------------------------------------------


def _best_ms(fn: Callable[[], object], seconds: float, rounds: int) -> float:
    """Best (lowest) mean milliseconds per call over ``rounds`` rounds of ``seconds`` each."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(10):
                fn()
            n += 10
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / n * 1000)
    return best


def crypto_costs(pki: sim.DevPki, tee: str, w: Workload, seconds: float, rounds: int) -> dict[str, float]:
    """Milliseconds per call of each piece of server-side cryptography, as the server calls it."""
    collateral = QuoteCollateral.from_json(pki.collateral_json(tee))  # type: ignore[arg-type]
    verifier = Verifier(dcap_verifiers(StaticCollateral([collateral]), [pki.root_cert]))
    nonce = os.urandom(32)
    rd = binding.v1_report_data(nonce, w.spki)
    quote = make_quote(pki, tee, rd)
    roots = [pki.root_cert]
    verified = verifier.verify(tee, quote, rd)
    aes_secret = os.urandom(32)
    rsa_secret = rsa.generate_private_key(public_exponent=65537, key_size=3072).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secrets = {"AES-256": aes_secret, "RSA-3072": rsa_secret}
    ring = Keyring.generate("ES384")
    decision = default_attestation_policy(appraisal_input(verified, client_permissions=None))

    def ear() -> str:
        return issue_ear(
            ring,
            verified,
            decision,
            nonce=base64.b64encode(nonce).decode(),
            user_data=None,
            runtime_data={"nonce": base64.b64encode(nonce).decode(), "tee-pubkey": w.rsa_jwk},
            issuer="keybroker",
            ttl=timedelta(minutes=5),
            now=datetime.now(UTC),
        )

    token = ear()
    fns: dict[str, Callable[[], object]] = {
        "quote verification": lambda: verify_quote(quote, collateral, at=datetime.now(UTC), dev_roots=roots),
        # informational: what the server's Verifier adds (PCK extension parse to pick the collateral)
        "Verifier.verify (lookup + verification)": lambda: verifier.verify(tee, quote, rd),
        "EAR issue (ES384)": ear,
        "EAR verify (ES384)": lambda: verify_ear(ring, token, now=datetime.now(UTC), issuer="keybroker"),
    }
    for label, secret in secrets.items():
        fns[f"SecL wrap {label}"] = lambda s=secret: wrap.secl_from_transfer(  # type: ignore[misc]
            software_wrap(s, w.rsa_priv.public_key(), b"")
        )
        fns[f"JWE RSA-OAEP-256 {label}"] = lambda s=secret: wrap.jwe_wrap(s, w.rsa_jwk)  # type: ignore[misc]
        fns[f"JWE ECDH-ES+A256KW {label}"] = lambda s=secret: wrap.jwe_wrap(s, w.ec_jwk)  # type: ignore[misc]
    return {name: round(_best_ms(fn, seconds, rounds), 4) for name, fn in fns.items()}


# --- profiling (optional) ------------------------------------------------------------------------

#: A sample whose innermost frame is one of these is a thread waiting, not working.
IDLE_LEAVES = ("Selector.select (selectors.py", "Condition.wait (threading.py", "Event.wait (threading.py")
# Buckets for the working samples: the first pattern, in this order, found anywhere in the stack.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("crypto: quote verification", ("verify_quote (",)),
    ("collateral lookup (PCK extension parse)", ("quote_fmspc_and_ca (",)),
    ("crypto: EAR issue", ("issue_ear (",)),
    ("crypto: EAR verify", ("verify_ear (",)),
    ("crypto: wrap (SecL/JWE)", ("software_wrap (", "jwe_wrap (")),
    ("DB commit (incl. fsync)", ("do_commit (",)),
    ("audit append (head check, record hash, signature)", ("keybroker/audit/",)),
    ("DB: nonces", ("keys/nonces.py",)),
    ("DB: key + policy lookup", ("_key_and_policy (",)),
    ("DB: sessions/resources (kbs/v0)", ("KbsV0Service",)),
    ("DB: other (ORM, SQL, connections)", ("sqlalchemy/", "sqlite3")),
    ("JWK/SPKI checks, report data", ("_check_jwk (", "load_spki (", "v0_report_data (", "v1_report_data (")),
    ("policy evaluation", ("appraisal/",)),
    ("threadpool hand-off (anyio)", ("run_sync_in_worker_thread (", "WorkerThread.run (")),
    ("TLS", ("ssl.py", "sslproto.py")),
    ("JSON & validation", ("json/", "pydantic", "rfc8785")),
    ("metrics & middleware", ("prometheus_client/", "keybroker/api/app.py", "starlette/middleware/")),
    ("HTTP server & framework", ("uvicorn/", "starlette/", "fastapi/", "h11/")),
    ("asyncio loop", ("asyncio/",)),
]


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Bucket py-spy's collapsed stacks (``--format raw``), as % of the server's working samples.

    py-spy counts a thread in a blocking call that it does not know as idle (fsync, for one) as
    working, which is what we want here: "DB commit" is CPU and disk waits together.
    """
    buckets: Counter[str] = Counter()
    self_frames: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or any(p in frames[-1] for p in IDLE_LEAVES):
            idle += n
            continue
        busy += n
        for name, pats in BUCKETS:
            if any(p in stack for p in pats):
                buckets[name] += n
                break
        else:
            buckets["other"] += n
        self_frames[frames[-1]] += n
        for f in set(frames[1:]):
            if "keybroker/" in f and "cli/" not in f:
                incl[f] += n

    def pct(c: int) -> float:
        return round(100 * c / busy, 1) if busy else 0.0

    return {
        "samples": busy,
        "idle_samples": idle,
        "buckets_pct": {k: pct(c) for k, c in buckets.most_common()},
        "top_self_pct": {k: pct(c) for k, c in self_frames.most_common(top)},
        "top_keybroker_inclusive_pct": {k: pct(c) for k, c in incl.most_common(top)},
    }


@contextlib.contextmanager
def py_spy(pyspy: str | None, pid: int, out: Path, cpus: set[int] | None) -> Iterator[list[Path]]:
    """Sample the server with py-spy (all threads, GIL holders and waiters alike) while the block runs."""
    produced: list[Path] = []
    if pyspy is None:
        yield produced
        return
    cmd = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out),
        "--nonblocking",
    ]
    proc = subprocess.Popen(  # noqa: PLW1509
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: _pin(cpus)) if cpus else None,
    )
    try:
        time.sleep(0.5)  # attached
        yield produced
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            produced.append(out)


# --- main ----------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None and x == x else "n/a"


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
        f"{'srv ms/tx':>10}{'floor srv':>10}{'cpu vs floor':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['protocol']:<9}{r['key']:<9}{r['workload_key']:<9}{r['clients']:>7}{r['transfers']:>5}"
            f"{r['errors']:>4}{_fmt(r['tx_per_s'], '.1f'):>8}{_fmt(r['p50_ms'], '.1f'):>8}"
            f"{_fmt(r['p99_ms'], '.1f'):>8}{_fmt(r['peer_tx_per_s'], '.1f'):>11}{_fmt(r['peer_p50_ms'], '.1f'):>8}"
            f"{_fmt(r['peer_p99_ms'], '.1f'):>8}{_fmt(r['vs_floor'], '.3f'):>9}"
            f"{_fmt(r['server_cpu_ms_per_tx'], '.2f'):>10}{_fmt(r['peer_server_cpu_ms_per_tx'], '.2f'):>10}"
            f"{_fmt(r['cpu_vs_floor'], '.3f'):>13}"
        )
        for e in r["first_errors"]:
            print(f"      error: {e}")
    print()
    for line in (
        "floor: bench/floor_app.py under uvicorn exactly as keybroker is served (same TLS certificate, options,",
        "CPU), answering the same requests (same body sizes and shapes, the real server's answers replayed) with",
        "no database, no crypto, no validation. vs floor = tx/s / floor tx/s at the same level: the share of",
        "what any app on this HTTPS stack reaches here. srv ms/tx: server CPU per transfer; cpu vs floor = floor",
        "srv / srv: the share of keybroker's server CPU that the stack itself (TLS, HTTP, framework) takes.",
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
    print()
    print("vs the cryptography alone (informative)")
    head = (
        f"{'protocol':<9}{'key':<9}{'workload':<9}{'clients':>7}{'tx/s':>8}{'crypto ms':>10}{'bound tx/s':>11}"
        f"{'ratio':>7}{'cpu ratio':>10}{'crypto lat ms':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
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
    for r in rows:
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
        f"{P99_TARGET_MS:.0f} ms at {max(LEVELS)} clients;"
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


def _pooled_server_cpu_ms(rows: Sequence[dict[str, Any]]) -> float | None:
    """Server CPU ms per transfer over all of ``rows`` together (more ticks than any one level has)."""
    n = sum(r["transfers"] for r in rows)
    cpu = sum(r["server_cpu_ms_per_tx"] * r["transfers"] for r in rows if r["transfers"])
    return round(cpu / n, 3) if n and cpu > 0 else None


def _targets(results: list[dict[str, Any]], peer_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets per protocol: met or not, and whether the framework floor measured in the same
    run allows them here at all.

    p99 < 50 ms at 32 clients: closed-loop, mean latency = clients / throughput (Little's law), so it
    needs more than 32 / 0.05 s = 640 tx/s; feasible here only if the floor itself went faster than that.
    Ratio >= 0.5: a server doing the floor's work plus the cryptography and nothing else runs at most at
    min(the floor's best tx/s, 1000 / (crypto ms + the floor's server CPU ms)); times the crypto seconds
    per transfer, that is the best ratio possible here (generous: the floor's clients make no quotes).
    """
    out = []
    clients = max(LEVELS)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    args = parser.parse_args(argv)

    budget = args.transfers or (40 if args.quick else 200)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    variants = [v for v in VARIANTS if v.primary or not args.quick]
    if args.variants:
        wanted = {x.strip() for x in args.variants.split(",")}
        variants = [v for v in VARIANTS if v.name in wanted]
        if not variants:
            parser.error(f"--variants: none of {sorted(wanted)} is one of {[v.name for v in VARIANTS]}")
    pyspy = None
    if args.profile:
        pyspy = args.pyspy or shutil.which("py-spy")
        if pyspy is None:
            parser.error("--profile needs py-spy (pip install py-spy; or pass --py-spy PATH)")

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:
        server_cpus: set[int] | None = {cpus[0]}
        client_cpus: set[int] | None = set(cpus[1:])
        placement_srv = (
            f"1 process (1 uvicorn worker) pinned to CPU {cpus[0]}, alone there apart from other users"
        )
        placement_cli = f"one process per client (HTTP + quote making), all pinned to CPU(s) {','.join(map(str, cpus[1:]))}"
    else:
        server_cpus = client_cpus = None
        placement_srv = "1 process (1 uvicorn worker), sharing the only CPU with the clients"
        placement_cli = "one process per client, sharing the only CPU with the server"

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="keybroker-bench-", dir=args.tmp))
    server = Server(tmp / "data", server_cpus)
    peer: FloorServer | None = None
    profiles: dict[str, Any] = {}
    crypto: dict[str, float] = {}
    floor = peer_floor = commit_ms = float("nan")
    results: list[Level] = []
    peer_results: list[Level] = []
    peer_sizes: dict[str, Any] = {}
    # the peer stands in for each protocol's first variant (its workload key, its captured answers)
    peer_variant = {v.protocol: v for v in reversed(variants)}
    loadavg_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    try:
        print(f"starting keybroker serve --dev in {tmp} ...", flush=True)
        server.start()
        aes_secret = os.urandom(32)
        target = set_up(server, args.tee, aes_secret)
        pki = sim.DevPki.load(server.data_dir / DEV_PKI_DIR)
        work = Workload.generate()

        # the cryptography alone, on the server's CPU while the server is idle
        _pin(server_cpus)
        print("measuring the cryptography alone ...", flush=True)
        crypto = crypto_costs(pki, args.tee, work, 0.15 if args.quick else 0.6, 2 if args.quick else 3)
        _pin(client_cpus)
        floor = request_floor(server, 100 if args.quick else 400)
        commit_ms = sqlite_commit_ms(tmp)

        # warm-up and a correctness check per variant (the client opens what it got), outside the clock;
        # the last warm-up transfer's answers become the peer's fixed answers
        seen: list[httpx.Request | httpx.Response] = []
        captured: dict[str, list[httpx.Request | httpx.Response]] = {}
        hooks: dict[str, list[Callable[..., Any]]] = {"request": [seen.append], "response": [seen.append]}
        with httpx.Client(
            base_url=target.url, verify=ssl_context(server.ca), timeout=60, event_hooks=hooks
        ) as c:
            for v in variants:
                for _ in range(3):
                    seen.clear()
                    body, _ = TRANSFER[v.protocol](c, target, v, pki, work)
                if peer_variant[v.protocol] is v:
                    captured[v.protocol] = list(seen)
                plain = open_result(v, body, work)
                if v.key == "aes" and plain != aes_secret:
                    raise RuntimeError(f"{v.name}: the released key is not the imported one")
                if v.key == "rsa":
                    key = serialization.load_der_private_key(plain, password=None)
                    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 3072:
                        raise RuntimeError(f"{v.name}: the released key is not an RSA-3072 PKCS#8 key")

        peer_target = None
        if args.peer:
            print("starting the framework floor (bench/floor_app.py) ...", flush=True)
            peer = FloorServer(server.data_dir, server_cpus, peer_responses(captured))
            peer.start()
            # real quotes, made once: every peer transfer sends the same one
            nonce = base64.b64encode(os.urandom(32)).decode()
            quotes = {
                "v1": make_quote(pki, args.tee, binding.v1_report_data(os.urandom(32), work.spki)),
                "v0": make_quote(
                    pki,
                    args.tee,
                    binding.v0_report_data(nonce, work.jwk(peer_variant.get("v0", VARIANTS[2]).workload), ""),
                ),
            }
            peer_target = Target(
                peer.url,
                str(server.ca),
                args.tee,
                {},
                {},
                {k: base64.b64encode(q).decode() for k, q in quotes.items()},
            )
            sizes: dict[str, dict[str, list[int]]] = {}
            with httpx.Client(
                base_url=peer.url, verify=ssl_context(server.ca), timeout=60, event_hooks=hooks
            ) as c:
                for proto, v in peer_variant.items():
                    for _ in range(3):
                        seen.clear()
                        PEER_TRANSFER[proto](c, peer_target, v, pki, work)
                    sizes[proto] = _sizes(seen)
            peer_floor = request_floor(peer, 100 if args.quick else 400)
            peer_sizes = {
                proto: {"keybroker": _sizes(captured[proto]), "floor": sizes[proto]} for proto in sizes
            }

        for v in variants:
            if peer is not None and peer_target is not None and peer_variant[v.protocol] is v:
                pv = peer_variant[v.protocol]
                for n in levels:
                    print(f"  framework floor for /kbs/{pv.protocol} x {n} clients ...", flush=True)
                    peer_results.append(
                        run_level(
                            peer,
                            peer_target,
                            pv,
                            pki,
                            work,
                            n,
                            max(budget, n),
                            seconds,
                            client_cpus,
                            peer=True,
                        )
                    )
            cost = sum(crypto[p] for p in crypto_parts(v))
            for n in levels:
                prof_out = args.out.parent / f"transfer-profile-{v.name.replace('/', '_')}-{n}.txt"
                profiling = pyspy is not None and n == max(levels)
                print(f"  {v.name} x {n} clients ...", flush=True)
                with py_spy(pyspy if profiling else None, server.pid, prof_out, client_cpus) as produced:
                    level = run_level(server, target, v, pki, work, n, max(budget, n), seconds, client_cpus)
                level.crypto_ms_per_tx = round(cost, 3)
                level.crypto_bound_tx_per_s = round(1000 / cost, 1)
                level.ratio = round(level.tx_per_s * cost / 1000, 3)
                level.crypto_floor_ms = round(n * cost, 2)
                level.cpu_ratio = round(cost / level.server_cpu_ms_per_tx, 3) if level.transfers else 0.0
                level.http_floor_ms_per_tx = round(REQUESTS[v.protocol] * floor, 2)
                _compare_with_peer(level, peer_results)
                results.append(level)
                for path in produced:
                    profiles[f"{v.name} x {n}"] = {"raw": str(path), **summarize_profile(path)}
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if peer is not None:
            peer.stop()
            with contextlib.suppress(OSError):
                shutil.copy(peer.log_path, args.out.parent / "transfer-floor.log")
        server.stop()
        with contextlib.suppress(OSError):
            shutil.copy(server.log_path, args.out.parent / "transfer-server.log")
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [asdict(r) for r in results]
    peer_rows = [asdict(r) for r in peer_results]
    report: dict[str, Any] = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "tee": args.tee,
            "mode": f"{'quick' if args.quick else 'full'}: up to {budget} transfers or {seconds:g} s per level",
            "cpus": len(cpus),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "server": placement_srv + "; HTTPS (TLS 1.3) with keep-alive, SQLite WAL",
            "clients": placement_cli,
            "peer": (
                "the framework floor, bench/floor_app.py: FastAPI under uvicorn as keybroker is served (same "
                "TLS certificate and key, log_config=None, access_log=False, 1 process, httptools/uvloop), "
                "pinned to the server's CPU; no database, crypto or validation; same requests and body sizes, "
                "one real quote made before the run and reused (its clients make no quotes)"
                if args.peer
                else "none (--no-peer)"
            ),
            "primary_comparison": "vs_floor = tx/s / the framework floor's tx/s, same protocol and level",
            "crypto_alone": "this process on the server's CPU while the server was idle, best of rounds",
            "database": f"SQLite WAL, synchronous=FULL, on {_fs_type(tmp)} in {tmp.parent}; a committed "
            f"one-row transaction there takes {commit_ms:.2f} ms",
            "sqlite_commit_ms": commit_ms,
            "loadavg_before": [round(x, 2) for x in loadavg_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        },
        "crypto_ms": crypto,
        "request_floor_ms": floor,
        "crypto_parts": {v.name: crypto_parts(v) for v in variants},
        "results": rows,
        "peer": {
            "app": "bench/floor_app.py",
            "request_floor_ms": peer_floor,
            "sizes": peer_sizes,
            "client_bound_levels": sorted(
                {(r["protocol"], r["clients"]) for r in peer_rows if r["client_core_util"] >= CLIENT_BOUND}
            ),
            "results": peer_rows,
        }
        if args.peer
        else None,
        "targets": _targets(rows, peer_rows),
        "profile": profiles,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nresults: {args.out}")
    failed = sum(r.errors for r in results + peer_results)
    if failed:
        print(
            f"\n{failed} TRANSFERS FAILED (the numbers above count only those that succeeded); the servers' logs: "
            f"{args.out.parent / 'transfer-server.log'}, {args.out.parent / 'transfer-floor.log'}"
        )
        return EXIT_FAILED_TRANSFERS
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
