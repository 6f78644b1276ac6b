"""The server-side cryptography alone, as the server calls it: quote verification with warm collateral,
the wraps (SecL: RSA-OAEP-256 + AES-GCM; /kbs/v0: the JWE), the EAR issued at /kbs/v0 attest."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kbbench.flows import Workload, make_quote
from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input
from keybroker.attestation.ear import Keyring, issue_ear, verify_ear
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.dcap.plugin import dcap_verifiers
from keybroker.tee.dcap.sources import StaticCollateral
from keybroker.tee.dcap.verify import verify_quote
from keybroker.tee.verifier import Verifier
from keybroker.wire import binding
from keybroker.wire.envelope import software_wrap


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
