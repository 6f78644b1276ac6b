"""The attestation service: nonces, evidence appraisal and signed attestation results (EAR JWTs).

The broker uses it in-process; ``/attestation/v1`` exposes it over HTTP.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy.orm import Session

from keybroker.appraisal.decision import Decision
from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input, claims_digest
from keybroker.attestation import nonces
from keybroker.attestation.ear import (
    EarClaims,
    VerifiedEarCache,
    issue_ear,
    jwks_keys,
    unverified_kid,
    verify_ear,
)
from keybroker.attestation.keyring_store import KeyringStore
from keybroker.audit import log as audit
from keybroker.audit.inputs import AppraisalInputs
from keybroker.errors import KeybrokerError
from keybroker.limits import OutstandingCap
from keybroker.store.db import Database
from keybroker.tee.verifier import ExpectedReportData, KbsV1Binding, VerifiedEvidence, Verifier

ATTEST_PURPOSE = "attestation-v1"
ISSUER = "keybroker"
DEFAULT_TOKEN_TTL = timedelta(minutes=5)


@dataclass(frozen=True)
class TrustedIssuer:
    """A remote attestation service whose tokens are accepted: its ``iss`` and its JWKS."""

    issuer: str
    jwks: Mapping[str, Any]
    #: Where the JWKS came from (for errors and logs).
    source: str

    @cached_property
    def kids(self) -> frozenset[str]:
        return frozenset(jwks_keys(self.jwks))


@dataclass(frozen=True)
class Attested:
    token: str
    verified: VerifiedEvidence
    decision: Decision


class AttestationService:
    def __init__(
        self,
        db: Database,
        verifier: Verifier,
        keyring: KeyringStore,
        nonce_ttl: timedelta,
        token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        trusted: Sequence[TrustedIssuer] = (),
        *,
        nonce_cap: OutstandingCap,
        inputs: AppraisalInputs | None = None,
    ) -> None:
        """``nonce_cap``: the outstanding ``/attestation/v1`` nonces allowed (429 past it).
        ``inputs``: each attestation's audit record names its appraisal input (and keeps it)."""
        self._nonce_cap = nonce_cap
        self._inputs = inputs or AppraisalInputs(0)
        self._db = db
        self._trusted = tuple(trusted)
        self.verifier = verifier
        self.keyring = keyring
        self._nonce_ttl = nonce_ttl
        self._token_ttl = token_ttl
        self._verified = VerifiedEarCache()

    def nonce(self) -> nonces.IssuedNonce:
        # not durable: a nonce lost in a machine crash only makes the client ask again
        with self._db.session(durable=False) as s:
            return nonces.issue(
                s, purpose=ATTEST_PURPOSE, subject=None, ttl=self._nonce_ttl, cap=self._nonce_cap
            )

    def appraise_and_sign(
        self,
        tee: str,
        evidence: bytes,
        expected: ExpectedReportData,
        *,
        nonce: str | None,
        user_data: bytes | None,
        runtime_data: dict[str, Any] | None,
        actor: str,
        protocol: str,
        on_success: Callable[[Session, Attested], None] | None = None,
    ) -> Attested:
        """Verify, appraise with the default attestation policy, sign an EAR; audit either way.

        ``on_success`` runs in the transaction that audits the success, so that the caller's own
        writes (a session's token) commit with the audit record, or not at all.
        """
        details: dict[str, Any] = {
            "protocol": protocol,
            "tee": tee,
            "evidence_sha256": self.verifier.evidence_sha256(tee, evidence),
        }
        try:
            verified = self.verifier.verify(tee, evidence, expected)
        except KeybrokerError as exc:
            details["failed_check"] = exc.extra.get("check")
            with self._db.session() as s:
                audit.append(
                    s,
                    actor=actor,
                    action="attestation.attest",
                    outcome="denied",
                    reason=exc.detail,
                    details=details,
                )
            raise
        doc = appraisal_input(verified, client_permissions=None)
        decision = default_attestation_policy(doc)
        now = datetime.now(UTC)
        ring = self.keyring.keyring()
        token = issue_ear(
            ring,
            verified,
            decision,
            nonce=nonce,
            user_data=user_data,
            runtime_data=runtime_data,
            issuer=ISSUER,
            ttl=self._token_ttl,
            now=now,
        )
        details.update(
            {
                "claims_sha256": claims_digest(verified),
                "ear_status": decision.ear_status,
                "tcb_status": verified.status,
            }
        )
        result = Attested(token, verified, decision)
        with self._db.session() as s:
            self._inputs.append(
                s, doc, actor=actor, action="attestation.attest", outcome="success", details=details
            )
            if on_success is not None:
                on_success(s, result)
        self._verified.add_signed(ring, token, issuer=ISSUER)  # its use (/kbs/v0 resource) skips ECDSA
        return result

    def attest_v1(self, tee: str, evidence: bytes, nonce: bytes, user_data: bytes, actor: str) -> Attested:
        """``/attestation/v1/attest``: the evidence binds the nonce and user data as ``/kbs/v1`` does
        (SGX/TDX: REPORTDATA = SHA-512(nonce || user_data)); the nonce single use."""
        # not durable by itself: appraise_and_sign audits the outcome durably next
        with self._db.session(durable=False) as s:
            nonces.consume(s, nonce, purpose=ATTEST_PURPOSE, subject=None)
        return self.appraise_and_sign(
            tee,
            evidence,
            KbsV1Binding(nonce, user_data),
            nonce=base64.b64encode(nonce).decode(),
            user_data=user_data,
            runtime_data=None,
            actor=actor,
            protocol="attestation/v1",
        )

    def verify_token(self, token: str) -> EarClaims:
        """The claims of one of our EARs, or of a trusted remote attestation service's.

        Known-verified tokens of ours (ours, or verified before) skip the signature check, with the
        kid and expiry checked again (see :class:`VerifiedEarCache`). A token whose kid is in a
        trusted remote service's JWKS (and not in our keyring) is verified against that JWKS and
        that service's issuer, in full every time.
        """
        known = self.known_tokens()(token)
        if known is not None:
            return known
        now = datetime.now(UTC)
        ring = self.keyring.keyring()
        kid = unverified_kid(token) if self._trusted else None
        if kid is not None and kid not in ring.kids:
            for remote in self._trusted:
                if kid in remote.kids:
                    return verify_ear(remote.jwks, token, now=now, issuer=remote.issuer)
        try:
            claims = verify_ear(ring, token, now=now, issuer=ISSUER)
        except KeybrokerError:
            # another replica may have rotated: reload once
            claims = verify_ear(self.keyring.keyring(refresh=True), token, now=now, issuer=ISSUER)
        self._verified.add(token, claims)
        return claims

    def known_tokens(self) -> Callable[[str], EarClaims | None]:
        """A look-up of known-verified tokens (None: not known, verify it with :meth:`verify_token`)
        against the keyring as it is now. Take it before opening a transaction: loading the keyring
        may need the database."""
        ring = self.keyring.keyring()
        return lambda token: self._verified.claims(ring, token, now=datetime.now(UTC), issuer=ISSUER)

    def jwks(self) -> dict[str, Any]:
        return self.keyring.keyring().jwks()
