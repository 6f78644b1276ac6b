"""``/kbs/v1`` key transfer (Intel SecL / Trust Authority KBS style), the workload side.

1. ``POST /kbs/v1/keys/{id}/transfer`` with an empty body: a fresh nonce, and the key's public half
   for RSA/EC keys (null for a secret): :func:`request_challenge`. A caller may stop here when it
   already holds the key (nothing is released, nothing is audited).
2. An ephemeral RSA-3072 key pair, made here, kept in memory only.
3. Evidence whose REPORTDATA = SHA-512(nonce || DER SPKI of that key), or for a TPM quote whose
   extraData = SHA-256(nonce || DER SPKI) (see docs/architecture.md).
4. ``POST`` again with ``{quote, nonce, user_data}`` and ``Attestation-Type``: the wrapped key.
5. :func:`keybroker.client.unwrap.secl_unwrap` with the ephemeral private key.

The nonce is single use and the broker spends it before it looks at the evidence, so step 4 is never
retried by itself: on a network error or a 5xx the whole exchange starts again from step 1 (with a new
nonce and a new key pair), up to the transport's retry policy. A released private key must have the
public half the challenge named.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.client.errors import Denied, Inconsistent, TlsVerificationFailed, Unreachable
from keybroker.client.evidence import TPM_QUOTE_TEES, Provider
from keybroker.client.http import Transport
from keybroker.client.material import ReleasedKey, classify
from keybroker.client.unwrap import secl_unwrap
from keybroker.errors import InvalidInput
from keybroker.wire.binding import v1_report_data, v1_tpm_extra_data

log = logging.getLogger("keybroker.client")

EPHEMERAL_RSA_BITS = 3072
V1_TEES = {
    "sgx": "SGX",
    "tdx": "TDX",
    "snp": "SNP",
    "tpm": "TPM",
    "az-snp-vtpm": "AZ-SNP-VTPM",
    "az-tdx-vtpm": "AZ-TDX-VTPM",
}


@dataclass(frozen=True)
class Timings:
    """Seconds spent per step of the last attempt (for the CLI's ``--timings``)."""

    steps: dict[str, float] = field(default_factory=dict)


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"the broker's answer has no {what}", field=what)
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise InvalidInput(f"the broker's {what} is not base64", field=what) from None


@dataclass(frozen=True)
class Challenge:
    """The broker's answer to the empty-body POST."""

    nonce: bytes = field(repr=False)
    #: The type the key's policy names first (a hint: the provider decides what is sent).
    attestation_type: str
    #: ``private``: an RSA/EC key whose DER SubjectPublicKeyInfo is ``public_key``; ``secret``: AES or
    #: raw bytes; ``unknown``: the broker did not say (an older broker).
    kind: Literal["private", "secret", "unknown"]
    public_key: bytes | None = None


def request_challenge(transport: Transport, key_id: str, *, retry: bool = False) -> Challenge:
    """Step 1. Spends nothing on the broker but a nonce, so a caller may ask it to be retried."""
    resp = transport.request("POST", f"/kbs/v1/keys/{key_id}/transfer", content=b"", retry=retry)
    body = resp.json()
    if not isinstance(body, dict):
        raise InvalidInput("the broker's challenge is not a JSON object", field="challenge")
    nonce = _b64((body.get("nonce") or {}).get("val"), "nonce.val")
    wanted = resp.headers.get("Attestation-Type", "")
    if "public_key" not in body:
        return Challenge(nonce, wanted, "unknown")
    if body["public_key"] is None:
        return Challenge(nonce, wanted, "secret")
    spki = _b64(body["public_key"], "public_key")
    try:
        serialization.load_der_public_key(spki)
    except ValueError:
        raise InvalidInput(
            "the broker's public_key is not a DER SubjectPublicKeyInfo", field="public_key"
        ) from None
    return Challenge(nonce, wanted, "private", spki)


def _check_release(challenge: Challenge, released: ReleasedKey) -> ReleasedKey:
    """The released key must be the one the challenge described (the "unchanged" decisions rest on it)."""
    if challenge.kind == "unknown":
        return released
    if challenge.kind == "secret":
        if released.kind != "secret":
            raise Inconsistent(f"the broker announced a secret but released a {released.describe()}")
        return released
    if released.kind == "secret" or released.public_key_der() != challenge.public_key:
        raise Inconsistent(
            f"the broker released {released.describe()} {released.key_id}, not the key whose public half "
            "its challenge named; nothing was stored"
        )
    return released


def _attempt(
    transport: Transport,
    key_id: str,
    provider: Provider,
    timings: dict[str, float],
    challenge: Challenge | None,
) -> ReleasedKey:
    t0 = time.perf_counter()
    path = f"/kbs/v1/keys/{key_id}/transfer"
    if challenge is None:
        challenge = request_challenge(transport, key_id)
        timings["challenge"] = time.perf_counter() - t0
    nonce, wanted = challenge.nonce, challenge.attestation_type
    t1 = time.perf_counter()

    tee = provider.tee
    if tee not in V1_TEES:
        raise InvalidInput(
            f"/kbs/v1 takes {', '.join(V1_TEES.values())} evidence; {provider.source} provides {tee.upper()}",
            field="tee",
        )
    attestation_type = V1_TEES[tee]
    if wanted and wanted != attestation_type:
        log.info("the key's policy names %s first; sending %s evidence", wanted, attestation_type)

    private = rsa.generate_private_key(public_exponent=65537, key_size=EPHEMERAL_RSA_BITS)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    t2 = time.perf_counter()
    timings["keypair"] = t2 - t1
    # a TPM quote carries SHA-256(nonce || SPKI) as extraData; the others SHA-512 as REPORTDATA
    binding = v1_tpm_extra_data(nonce, spki) if tee in TPM_QUOTE_TEES else v1_report_data(nonce, spki)
    evidence = provider.evidence(binding)
    t3 = time.perf_counter()
    timings["evidence"] = t3 - t2
    log.info("evidence: %d bytes from %s", len(evidence.quote), evidence.source)

    # SEV-SNP: the report, then the certificate table it came with (configfs-tsm auxblob), so the
    # broker can verify it without a KDS cache
    quote = evidence.quote + (evidence.aux or b"") if tee == "snp" else evidence.quote
    resp = transport.request(
        "POST",
        path,
        json_body={
            "quote": base64.b64encode(quote).decode(),
            "nonce": {"val": base64.b64encode(nonce).decode()},
            "user_data": base64.b64encode(spki).decode(),
        },
        headers={"Attestation-Type": attestation_type},
        retry=False,
    )
    t4 = time.perf_counter()
    timings["transfer"] = t4 - t3
    body = resp.json()
    material = secl_unwrap(
        _b64(body.get("wrapped_key"), "wrapped_key"), _b64(body.get("wrapped_swk"), "wrapped_swk"), private
    )
    timings["unwrap"] = time.perf_counter() - t4
    return _check_release(challenge, classify(key_id, material))


def fetch_key(
    transport: Transport,
    key_id: str,
    provider: Provider,
    *,
    challenge: Challenge | None = None,
    timings: Timings | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReleasedKey:
    """Run the exchange (again from the challenge after a network error or 5xx); :class:`Denied` as soon
    as the broker refuses. ``challenge``: one just obtained with :func:`request_challenge`, used by the
    first attempt (its nonce is fresh and unspent)."""
    attempts = max(1, transport.retry.attempts)
    steps = timings.steps if timings is not None else {}
    for attempt in range(attempts):
        try:
            return _attempt(transport, key_id, provider, steps, challenge if attempt == 0 else None)
        except Denied:
            raise
        except Unreachable as exc:
            if isinstance(exc, TlsVerificationFailed) or attempt + 1 == attempts:
                raise
            wait = transport.retry.delay(attempt)
            log.warning("key transfer: %s; starting over in %.1fs", exc.detail, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
