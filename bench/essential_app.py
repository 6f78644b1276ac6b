"""The essential work: the least a correct key broker on this stack must spend per /kbs/v1 transfer.

``bench/transfer.py`` runs this beside ``keybroker serve`` and the framework floor
(``bench/floor_app.py``), served the same way (same TLS certificate and key, ``uvicorn.run`` with
``log_config=None``, ``access_log=False``, one process, httptools/uvloop picked by uvicorn), pinned to
the same CPU. It answers the two requests of a /kbs/v1 transfer on keybroker's own path (so the
bench's real client flow drives it: the clients make quotes that bind this app's nonces) and does
only what no correct key broker can skip, with the fewest Python layers (no ORM, no models, no
dependency injection, no middleware):

- challenge (``POST /kbs/v1/keys/{id}/transfer``, empty body): 32 random bytes; their SHA-256 inserted
  into a nonce table in a non-durable commit (as keybroker's challenge: SQLite ``synchronous=NORMAL``
  in WAL mode, PostgreSQL ``synchronous_commit=off``); the nonce as JSON, ``Attestation-Type`` header.
- transfer (the same path with ``{"quote", "nonce", "user_data"}``): the JSON parsed, the three
  base64 fields decoded, the workload key loaded (``wire.binding.load_spki``: canonical DER, RSA
  bounds); the quote verified by keybroker's pure verifier (``tee.verifier.Verifier`` over the DCAP
  plugins, with the dev PKI's collateral and root, as the bench's server has them), which checks
  REPORTDATA = SHA-512(nonce || user_data); the claims compared with the bench's transfer policy (its
  measurements, SVN minimum, TCB status UpToDate, simulated evidence allowed); the key wrapped
  SecL-style to the workload key (``keys.wrap.secl_wrap``: RSA-OAEP-256 + AES-GCM); an audit record
  (SHA-256 over the previous hash and the record's JSON) signed with Ed25519; then ONE durable
  transaction on the raw driver: the nonce spent (conditional on unused, unexpired, this key), the
  record inserted, the chain head advanced. A quote that does not verify, a binding that does not
  match or claims the policy does not allow get 403, their nonce spent with a ``denied`` record; an
  unknown, spent or expired nonce gets 403 with nothing written.

Left out on purpose (keybroker does them; each costs microseconds, not milliseconds): the key's
unseal from its encrypted store (the secret is held in memory here), the outstanding-nonce cap and
expired-nonce sweep, a general policy language (the policy here is a few comparisons).

Everything runs inline on the event loop, the cheaper way in CPU (``--threads`` runs it in the default
thread pool as keybroker does, to compare: ``bench/transfer.py --essential-threads``); a durable commit
then blocks the loop, which costs latency under concurrency, not CPU.

Run: ``python bench/essential_app.py --port 8443 --certfile server.pem --keyfile server-key.pem
--dev-pki DIR --database nonces.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request, Response

from keybroker.errors import KeybrokerError
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.verifier import KbsV1Binding, VerifiedEvidence, Verifier
from keybroker.wire import binding

#: the keys this app releases (the bench's flows address them as ``Target.key_ids``)
KEY_IDS = {"aes": "00000000-0000-4000-8000-00000000ae50", "rsa": "00000000-0000-4000-8000-0000000035a0"}
NONCE_SIZE = 32
NONCE_TTL = 300
#: as ``keybroker.audit.log``'s record signatures: a domain, then the record hash
_SIG_DOMAIN = b"keybroker/audit-record/v1\n"
_GENESIS = "0" * 64

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nonces (id VARCHAR(64) PRIMARY KEY, subject VARCHAR(64) NOT NULL, "
    "expires_at BIGINT NOT NULL, used_at BIGINT)",
    "CREATE TABLE IF NOT EXISTS audit_log (seq BIGINT PRIMARY KEY, time VARCHAR(40) NOT NULL, "
    "actor VARCHAR(256) NOT NULL, action VARCHAR(64) NOT NULL, object_id VARCHAR(256), "
    "outcome VARCHAR(16) NOT NULL, reason TEXT, details TEXT, prev_hash VARCHAR(64) NOT NULL, "
    "hash VARCHAR(64) NOT NULL, sig VARCHAR(128))",
    "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, "
    "hash VARCHAR(64) NOT NULL)",
)


class Denied(Exception):
    """403: the evidence, its binding or its claims do not allow the release."""


class BadRequest(Exception):
    """400: the request is malformed."""


# --- the database: the raw driver, three statements per transfer ------------------------------------


@dataclass(frozen=True)
class Record:
    """An audit record's fields (as ``keybroker.audit.log``'s)."""

    time: str
    actor: str
    action: str
    object_id: str
    outcome: str
    reason: str | None
    details: dict[str, Any]


class Store(Protocol):
    def issue(self, nonce_id: str, subject: str, expires_at: int) -> None: ...

    def spend_and_audit(
        self, nonce_id: str, subject: str, now: int, record: Record, key: Ed25519PrivateKey
    ) -> bool: ...


def _chain(prev_hash: str, seq: int, r: Record, key: Ed25519PrivateKey) -> tuple[str, str, str]:
    """The record's details JSON, hash (SHA-256 of the previous hash and the fields' JSON, sorted keys,
    compact) and signature (Ed25519 over the domain and the hash)."""
    fields = {
        "seq": seq,
        "time": r.time,
        "actor": r.actor,
        "action": r.action,
        "object_id": r.object_id,
        "outcome": r.outcome,
        "reason": r.reason,
        "details": r.details,
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(prev_hash.encode() + text.encode()).hexdigest()
    sig = base64.b64encode(key.sign(_SIG_DOMAIN + bytes.fromhex(digest))).decode()
    details = json.dumps(r.details, sort_keys=True, separators=(",", ":"))
    return details, digest, sig


class SqliteStore:
    """SQLite with keybroker's pragmas (WAL, foreign keys, ``secure_delete``, transactions begun
    IMMEDIATE by hand). Two connections: one ``synchronous=NORMAL`` for the nonces issued (keybroker's
    ``session(durable=False)``), one ``synchronous=FULL`` for the transfer's durable commit (keybroker
    switches one connection's pragma per transaction instead)."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.lazy = self._connect(path, "NORMAL")
        self.durable = self._connect(path, "FULL")
        with self.durable:
            for statement in _SCHEMA:
                self.durable.execute(statement)
            self.durable.execute(
                "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (_GENESIS,)
            )

    @staticmethod
    def _connect(path: str, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            f"synchronous={synchronous}",
            "secure_delete=ON",
        ):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def issue(self, nonce_id: str, subject: str, expires_at: int) -> None:
        c = self.lazy
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "INSERT INTO nonces (id, subject, expires_at) VALUES (?, ?, ?)",
                (nonce_id, subject, expires_at),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def spend_and_audit(
        self, nonce_id: str, subject: str, now: int, record: Record, key: Ed25519PrivateKey
    ) -> bool:
        """In one durable transaction: the nonce spent, the record appended, the head advanced. False
        (nothing written) when the nonce is not this key's, spent or expired."""
        c = self.durable
        c.execute("BEGIN IMMEDIATE")
        try:
            spent = c.execute(
                "UPDATE nonces SET used_at = ? WHERE id = ? AND subject = ? AND used_at IS NULL AND expires_at > ?",
                (now, nonce_id, subject, now),
            ).rowcount
            if spent != 1:
                c.execute("ROLLBACK")
                return False
            seq, prev = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            seq += 1
            details, digest, sig = _chain(prev, seq, record, key)
            c.execute(
                "INSERT INTO audit_log (seq, time, actor, action, object_id, outcome, reason, details, "
                "prev_hash, hash, sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, record.time, record.actor, record.action, record.object_id, record.outcome,
                 record.reason, details, prev, digest, sig),
            )  # fmt: skip
            c.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return True


class PostgresStore:
    """PostgreSQL through psycopg (no pool: one connection, this process's only one; autocommit, the
    transactions begun and ended by hand). The nonce's commit with ``synchronous_commit=off``
    (keybroker's ``session(durable=False)``); the head row locked ``FOR UPDATE`` as keybroker's audit
    append does (replicas queue there)."""

    def __init__(self, url: str) -> None:
        import psycopg  # only here: SQLite runs need no PostgreSQL driver

        self.conn = psycopg.connect(url, autocommit=True)
        with self.conn.transaction():
            for statement in _SCHEMA:
                self.conn.execute(statement)
            self.conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s) ON CONFLICT DO NOTHING", (_GENESIS,)
            )

    def issue(self, nonce_id: str, subject: str, expires_at: int) -> None:
        c = self.conn
        c.execute("BEGIN")
        try:
            c.execute("SET LOCAL synchronous_commit TO OFF")
            c.execute(
                "INSERT INTO nonces (id, subject, expires_at) VALUES (%s, %s, %s)",
                (nonce_id, subject, expires_at),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def spend_and_audit(
        self, nonce_id: str, subject: str, now: int, record: Record, key: Ed25519PrivateKey
    ) -> bool:
        c = self.conn
        c.execute("BEGIN")
        try:
            spent = c.execute(
                "UPDATE nonces SET used_at = %s WHERE id = %s AND subject = %s AND used_at IS NULL "
                "AND expires_at > %s",
                (now, nonce_id, subject, now),
            ).rowcount
            if spent != 1:
                c.execute("ROLLBACK")
                return False
            row = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").fetchone()
            assert row is not None
            seq, prev = row[0] + 1, row[1]
            details, digest, sig = _chain(prev, seq, record, key)
            c.execute(
                "INSERT INTO audit_log (seq, time, actor, action, object_id, outcome, reason, details, "
                "prev_hash, hash, sig) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (seq, record.time, record.actor, record.action, record.object_id, record.outcome,
                 record.reason, details, prev, digest, sig),
            )  # fmt: skip
            c.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (seq, digest))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return True


def open_store(database: str) -> Store:
    """``postgresql://...``: :class:`PostgresStore`; anything else is a SQLite file path."""
    if database.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return PostgresStore(database.replace("postgresql+psycopg://", "postgresql://", 1))
    return SqliteStore(database)


# --- the transfer's pure work -----------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The bench's transfer policy (``keybroker.tee.sim.sim_policy``) as plain comparisons."""

    tdx_mrtd: frozenset[bytes] = frozenset({sim.DEFAULT_MRTD})
    tdx_mrseam: frozenset[bytes] = frozenset({sim.DEFAULT_MRSEAM})
    tdx_mrsignerseam: frozenset[bytes] = frozenset({sim.DEFAULT_MRSIGNERSEAM})
    tdx_seamsvn_min: int = sim.DEFAULT_SEAMSVN
    tdx_rtmr0: bytes = sim.DEFAULT_RTMRS[0]
    sgx_mrenclave: frozenset[bytes] = frozenset({sim.DEFAULT_MRENCLAVE})
    sgx_mrsigner: frozenset[bytes] = frozenset({sim.DEFAULT_MRSIGNER})
    sgx_isvprodid: frozenset[int] = frozenset({7})
    sgx_isvsvn_min: int = 2
    allow_simulated: bool = True

    def check(self, verified: VerifiedEvidence) -> None:
        if verified.sim and not self.allow_simulated:
            raise Denied("simulated evidence, and the policy does not allow it")
        if verified.status != "UpToDate":
            raise Denied(f"TCB status {verified.status} is not UpToDate")
        claims: Any = verified.detail.claims  # type: ignore[attr-defined]
        if verified.tee == "tdx":
            ok = (
                claims.mr_td in self.tdx_mrtd
                and claims.mr_seam in self.tdx_mrseam
                and claims.mr_signer_seam in self.tdx_mrsignerseam
                and claims.seam_svn >= self.tdx_seamsvn_min
                and claims.rtmr[0] == self.tdx_rtmr0
                and not claims.debug
            )
        else:
            ok = (
                claims.mr_enclave in self.sgx_mrenclave
                and claims.mr_signer in self.sgx_mrsigner
                and claims.isv_prod_id in self.sgx_isvprodid
                and claims.isv_svn >= self.sgx_isvsvn_min
                and not claims.debug
            )
        if not ok:
            raise Denied("the evidence's claims do not satisfy the key's transfer policy")


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field} is required (base64)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64") from None


@dataclass
class Broker:
    """The essential work, framework-free: :meth:`challenge` and :meth:`transfer` return the answer's
    status, JSON bytes and headers."""

    verifier: Verifier
    store: Store
    secrets: dict[str, bytes]
    record_key: Ed25519PrivateKey
    tee_header: str
    policy: Policy
    clock: Callable[[], float] = time.time

    def challenge(self, key_id: str) -> tuple[int, bytes, dict[str, str]]:
        if key_id not in self.secrets:
            return 404, b'{"detail":"no such key"}', {}
        nonce = os.urandom(NONCE_SIZE)
        now = int(self.clock())
        self.store.issue(hashlib.sha256(nonce).hexdigest(), key_id, now + NONCE_TTL)
        val = base64.b64encode(nonce).decode()
        body = f'{{"nonce":{{"val":"{val}","iat":{now},"exp":{now + NONCE_TTL}}},"public_key":null}}'
        return 200, body.encode(), {"Attestation-Type": self.tee_header}

    def transfer(
        self, key_id: str, raw: bytes, attestation_type: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        secret = self.secrets.get(key_id)
        if secret is None:
            return 404, b'{"detail":"no such key"}', {}
        try:
            req = json.loads(raw)
            if not isinstance(req, dict) or not isinstance(req.get("nonce"), dict):
                raise BadRequest("the body must be {quote, nonce: {val}, user_data}")
            tee = (attestation_type or "").lower()
            if tee not in ("tdx", "sgx"):
                raise BadRequest("the Attestation-Type header must be TDX or SGX")
            quote = _b64(req.get("quote"), "quote")
            nonce = _b64(req["nonce"].get("val"), "nonce.val")
            user_data = _b64(req.get("user_data"), "user_data")
            if len(nonce) != NONCE_SIZE:
                raise BadRequest(f"nonce.val is {len(nonce)} bytes, expected {NONCE_SIZE}")
            workload_key = binding.load_spki(user_data)
            if not isinstance(workload_key, rsa.RSAPublicKey):
                raise BadRequest("user_data must be an RSA key (SecL wraps to RSA-OAEP)")
        except (BadRequest, KeybrokerError, ValueError) as exc:
            return 400, json.dumps({"detail": str(exc)}).encode(), {}
        nonce_id = hashlib.sha256(nonce).hexdigest()
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
        details: dict[str, Any] = {"protocol": "kbs/v1", "tee": tee}
        try:
            verified = self.verifier.verify(tee, quote, KbsV1Binding(nonce, user_data))
            details["evidence_sha256"] = verified.evidence_sha256
            details["tcb_status"] = verified.status
            self.policy.check(verified)
        except (Denied, KeybrokerError) as exc:
            reason = str(exc)
            record = Record(stamp, "workload", "key.transfer", key_id, "denied", reason, details)
            # the attempt spends its nonce (no retry with it) and is audited, durably
            self.store.spend_and_audit(nonce_id, key_id, int(now), record, self.record_key)
            return 403, json.dumps({"detail": reason}).encode(), {}
        wrapped = wrap.secl_wrap(secret, workload_key)
        record = Record(stamp, "workload", "key.transfer", key_id, "success", None, details)
        if not self.store.spend_and_audit(nonce_id, key_id, int(now), record, self.record_key):
            return 403, b'{"detail":"the nonce is unknown, spent or expired"}', {}
        body = (
            f'{{"wrapped_key":"{base64.b64encode(wrapped.wrapped_key).decode()}",'
            f'"wrapped_swk":"{base64.b64encode(wrapped.wrapped_swk).decode()}"}}'
        )
        return 200, body.encode(), {}


def verifier_for(pki: sim.DevPki) -> Verifier:
    """The DCAP plugins with the dev PKI's root and its SGX and TDX collateral (what ``serve --dev``
    trusts and has imported)."""
    collateral = StaticCollateral(QuoteCollateral.from_json(pki.collateral_json(t)) for t in ("sgx", "tdx"))
    return Verifier(dcap_verifiers(collateral, [pki.root_cert]))


def fixed_secrets() -> dict[str, bytes]:
    """An AES-256 key and an RSA-3072 private key (PKCS#8 DER), fresh per start."""
    rsa_der = rsa.generate_private_key(public_exponent=65537, key_size=3072).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {KEY_IDS["aes"]: os.urandom(32), KEY_IDS["rsa"]: rsa_der}


def create_app(broker: Broker, *, threads: bool = False) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def call(fn: Callable[..., tuple[int, bytes, dict[str, str]]], *args: Any) -> Response:
        if threads:
            status, body, headers = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        else:
            status, body, headers = fn(*args)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/kbs/v1/keys/{key_id}/transfer")
    async def transfer(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        raw = await request.body()
        if not raw.strip():
            return await call(broker.challenge, key_id)
        return await call(broker.transfer, key_id, raw, request.headers.get("attestation-type"))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", help="TLS certificate chain (PEM); plain HTTP without it")
    parser.add_argument("--keyfile", help="TLS private key (PEM)")
    parser.add_argument("--dev-pki", type=Path, required=True, help="the dev PKI directory the server trusts")
    parser.add_argument("--database", required=True, help="a SQLite file, or a postgresql:// URL")
    parser.add_argument(
        "--tee", choices=("tdx", "sgx"), default="tdx", help="the challenge's Attestation-Type"
    )
    parser.add_argument(
        "--threads", action="store_true", help="run the work in the default thread pool (as keybroker does)"
    )
    args = parser.parse_args(argv)
    broker = Broker(
        verifier=verifier_for(sim.DevPki.load(args.dev_pki)),
        store=open_store(args.database),
        secrets=fixed_secrets(),
        record_key=Ed25519PrivateKey.generate(),
        tee_header=args.tee.upper(),
        policy=Policy(),
    )
    ssl: dict[str, str] = {}
    if args.certfile:
        ssl = {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile}
    # as ``keybroker serve`` calls it
    uvicorn.run(
        create_app(broker, threads=args.threads),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        **ssl,
    )


if __name__ == "__main__":
    main()
