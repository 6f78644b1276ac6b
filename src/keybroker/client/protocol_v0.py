"""The Confidential Containers KBS protocol 0.4.0 (``/kbs/v0``), the workload side.

1. ``POST /kbs/v0/auth`` ``{"version", "tee", "extra-params"}`` (offering SHA-384, SHA-512, SHA-256):
   a session cookie, a nonce and the selected hash.
2. An ephemeral key pair in memory: RSA-3072 (``RSA-OAEP-256``) or EC P-256 (``ECDH-ES+A256KW``).
3. Evidence whose report data is HASH(JCS({"tee-pubkey", "nonce", "additional-evidence"})),
   zero-padded to 64 bytes (a TPM quote's extraData: the hash itself); ``POST /kbs/v0/attest``: an
   attestation token (EAR).
4. ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` on the session: a flattened JWE to that key.

Like ``/kbs/v1``, a network error or 5xx after the session attested starts over from ``auth``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

from keybroker.client.errors import Denied, TlsVerificationFailed, Unreachable
from keybroker.client.evidence import TPM_QUOTE_TEES, Provider
from keybroker.client.http import Transport
from keybroker.client.material import ReleasedKey, classify
from keybroker.client.unwrap import jwe_unwrap
from keybroker.errors import InvalidInput
from keybroker.wire.binding import V0_HASHES, v0_report_data, v0_runtime_digest
from keybroker.wire.certtable import parse_cert_table

log = logging.getLogger("keybroker.client")

PROTOCOL_VERSION = "0.4.0"
OFFERED_HASHES = ["sha384", "sha512", "sha256"]
KeyType = Literal["rsa", "ec"]


def _split_path(resource: str) -> str:
    parts = resource.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidInput(f"resource {resource!r} must be REPOSITORY/TYPE/TAG", field="resource")
    return "/".join(parts)


def ephemeral_key(key_type: KeyType) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    pub = private.public_key()
    imported: RSAKey | ECKey = (
        RSAKey.import_key(pub) if isinstance(pub, rsa.RSAPublicKey) else ECKey.import_key(pub)
    )
    return dict(imported.as_dict(private=False))


def _selected_hash(extra: object) -> str:
    if isinstance(extra, dict) and "selected-hash-algorithm" in extra:
        alg = str(extra["selected-hash-algorithm"]).lower()
        if alg not in V0_HASHES or alg not in OFFERED_HASHES:
            raise InvalidInput(
                f"the broker selected hash {alg!r}, which was not offered", field="extra-params"
            )
        return alg
    return "sha384"


def snp_primary_evidence(report: bytes, auxblob: bytes | None) -> dict[str, Any]:
    """Trustee's SEV-SNP evidence: ``{"attestation_report", "cert_chain"}``, the report in base64 and
    the certificate table (configfs-tsm ``auxblob``) as virtee/sev ``CertTableEntry`` items."""
    chain: list[dict[str, Any]] | None = None
    if auxblob:  # checked by the provider (``evidence.usable_auxblob``)
        chain = [
            {
                "cert_type": entry.name.upper() if entry.name else {"OTHER": str(entry.guid)},
                "data": base64.b64encode(entry.data).decode(),
            }
            for entry in parse_cert_table(auxblob).entries
        ]
    return {"attestation_report": base64.b64encode(report).decode(), "cert_chain": chain}


def _attempt(transport: Transport, resource: str, provider: Provider, key_type: KeyType) -> ReleasedKey:
    tee = provider.tee
    auth = transport.request(
        "POST",
        "/kbs/v0/auth",
        json_body={
            "version": PROTOCOL_VERSION,
            "tee": tee,
            "extra-params": {"supported-hash-algorithms": OFFERED_HASHES},
        },
        retry=False,
        auth=False,
    ).json()
    nonce = auth.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise InvalidInput("the broker's auth answer has no nonce", field="nonce")
    hash_alg = _selected_hash(auth.get("extra-params"))

    private = ephemeral_key(key_type)
    jwk = public_jwk(private)
    primary: dict[str, Any]
    if tee in TPM_QUOTE_TEES:
        # a TPM quote carries the runtime-data hash itself as extraData; its evidence is JSON
        evidence = provider.evidence(v0_runtime_digest(nonce, jwk, "", hash_alg))
        primary = json.loads(evidence.quote)
    else:
        evidence = provider.evidence(v0_report_data(nonce, jwk, "", hash_alg))
        if tee == "snp":
            primary = snp_primary_evidence(evidence.quote, evidence.aux)
        else:
            primary = {"quote": base64.b64encode(evidence.quote).decode()}
            if tee == "tdx":
                primary["cc_eventlog"] = None
    log.info("evidence: %d bytes from %s (%s binding)", len(evidence.quote), evidence.source, hash_alg)
    transport.request(
        "POST",
        "/kbs/v0/attest",
        json_body={
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
        },
        retry=False,
        auth=False,
    )
    resp = transport.request("GET", f"/kbs/v0/resource/{resource}", retry=False, auth=False)
    body = resp.json()
    if not isinstance(body, dict):
        raise InvalidInput("the broker's resource answer is not a JWE object", field="resource")
    return classify(resource, jwe_unwrap(body, private))


def fetch_resource(
    transport: Transport,
    resource: str,
    provider: Provider,
    *,
    key_type: KeyType = "rsa",
    sleep: Callable[[float], None] = time.sleep,
) -> ReleasedKey:
    path = _split_path(resource)
    attempts = max(1, transport.retry.attempts)
    for attempt in range(attempts):
        try:
            return _attempt(transport, path, provider, key_type)
        except Denied:
            raise
        except Unreachable as exc:
            if isinstance(exc, TlsVerificationFailed) or attempt + 1 == attempts:
                raise
            wait = transport.retry.delay(attempt)
            log.warning("resource %s: %s; starting over in %.1fs", path, exc.detail, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
