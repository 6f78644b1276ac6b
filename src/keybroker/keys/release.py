"""Attested key release for ``/kbs/v1`` (Intel SecL / Trust Authority KBS style).

Steps, in this order (a failure at any step denies, is audited, and releases nothing):
1. the key exists and has a transfer policy (no policy: never released);
2. ``Attestation-Type`` is one the policy allows;
3. the nonce is checked (single use, this key, not expired) *before* the evidence is looked at;
   it is spent in the transaction that records the outcome (the release or the denial, with its
   audit record), so a failed attempt cannot be retried with the same nonce, and a nonce is never
   spent without an audited outcome: when that transaction fails (the database went away), the
   nonce stays unused and the same request can be sent again;
4. ``user_data`` is the workload's ephemeral public key, within bounds (DER SPKI, RSA 3072-8192
   bits; see :func:`keybroker.wire.binding.check_workload_key`), so that nothing the policy allows
   can fail at wrapping;
5. the evidence verifies (the TEE's verifier: for SGX/TDX chain, collateral, TCB) and binds the
   nonce and user data (SGX/TDX: REPORTDATA = SHA-512(nonce || user_data));
6. the key's policy allows the verified claims (and the caller's client permissions);
7. the key is wrapped to the workload key (SWK via RSA-OAEP-256, key under AES-256-GCM). A failure
   here is audited (outcome ``failed``) like every other outcome.

Denials tell the caller which check failed and what it presented; the policy's expected values
only to a caller whose token holds :data:`TRANSFER_PERMISSION` (the audit log always has them).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from keybroker.appraisal import secl
from keybroker.appraisal.decision import Decision, Reason, denied
from keybroker.appraisal.input import AppraisalInput, appraisal_input, claims_digest
from keybroker.appraisal.policy import TransferPolicyBody, stored_policy
from keybroker.appraisal.registry import REGISTRY
from keybroker.attestation import nonces
from keybroker.attestation.ear import EarClaims
from keybroker.attestation.remote import RemoteAttestation
from keybroker.audit.inputs import AppraisalInputs
from keybroker.auth.tokens import Principal
from keybroker.errors import (
    BackendUnavailable,
    EvidenceError,
    Forbidden,
    InvalidInput,
    KeybrokerError,
    NotFound,
    PolicyDenied,
    VerificationError,
)
from keybroker.keys import wrap
from keybroker.keystores.base import KeyStore
from keybroker.limits import OutstandingCap
from keybroker.seal import integrity
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import Key, TransferPolicy
from keybroker.tee.verifier import KbsV1Binding, Verifier
from keybroker.wire import binding

V1_PURPOSE = "kbs-v1-transfer"
#: SecL's transfer permission. Here: a denial explained in full (with the policy's expected
#: values), and, with ``resources:write``, serving a key through a ``/kbs/v0`` resource.
TRANSFER_PERMISSION = "keys:transfer"
log = logging.getLogger("keybroker.release")


def explains(principal: Principal | None) -> bool:
    """Whether the caller is told the policy's expected values when it is denied."""
    return principal is not None and principal.allows(TRANSFER_PERMISSION)


@dataclass(frozen=True)
class Challenge:
    nonce: nonces.IssuedNonce
    attestation_type: str
    #: The key's public half (PEM SPKI) for RSA/EC keys, None for secrets: not secret, and it lets a
    #: workload see that it already holds the key before it spends a release.
    public_key_pem: str | None = None


@dataclass(frozen=True)
class ReleasableKey:
    """What a release needs of a key row."""

    id: str
    backend_ref: str | None
    public_key_pem: str | None = None


@dataclass(frozen=True)
class _Spend:
    """A nonce checked at ``at``, spent with the outcome's audit record (see :func:`nonces.check`)."""

    value: bytes
    subject: str
    at: datetime

    def consume(self, s: Session) -> None:
        nonces.consume(s, self.value, purpose=V1_PURPOSE, subject=self.subject, now=self.at)


@dataclass(frozen=True)
class EvidenceRequest:
    attestation_type: str
    quote: bytes
    nonce: bytes
    user_data: bytes


def _rsa_workload_key(spki_der: bytes, field: str) -> rsa.RSAPublicKey:
    key = binding.load_spki(spki_der, field)
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidInput(
            f"/kbs/v1 wraps the session key with RSA-OAEP: {field} must be an RSA key "
            f"({binding.MIN_RSA_BITS}-{binding.MAX_RSA_BITS} bits); use /kbs/v0 for EC keys",
            field=field,
        )
    return key


def _wrap_failed(key_id: str, exc: Exception) -> KeybrokerError:
    """A failure after the policy allowed the release, as an error the audit records."""
    log.error(
        "key %s: wrapping for the workload failed after the policy allowed it: %s", key_id, type(exc).__name__
    )
    return KeybrokerError(
        f"the key was allowed but could not be wrapped to the workload key ({type(exc).__name__})"
    )


#: Prepared once (it runs twice per transfer): the key's backend reference and its policy.
_KEY_AND_POLICY = (
    select(
        Key.id,
        Key.algorithm,
        Key.key_length,
        Key.curve_type,
        Key.keystore,
        Key.backend_ref,
        Key.public_key_pem,
        Key.transfer_policy_id,
        Key.integrity_tag,
        TransferPolicy.body,
        TransferPolicy.integrity_tag.label("policy_tag"),
    )
    .outerjoin(TransferPolicy, TransferPolicy.id == Key.transfer_policy_id)
    .where(Key.id == bindparam("key_id"))
)


class ReleaseService:
    def __init__(
        self,
        db: Database,
        keystore: KeyStore,
        verifier: Verifier,
        nonce_ttl: timedelta,
        *,
        nonce_cap: OutstandingCap,
        remote: RemoteAttestation | None = None,
        integrity: RowIntegrity,
        verify_token: Callable[[str], EarClaims] | None = None,
        inputs: AppraisalInputs | None = None,
    ) -> None:
        """``integrity``: the key's row and its policy's must carry their tags (else denied).
        ``nonce_cap``: the outstanding transfer nonces allowed (429 past it).
        ``remote``: background checks verify evidence at that attestation service instead of
        in-process; its tokens are checked with ``verify_token`` (which must trust it).
        ``inputs``: each decision's audit record names its appraisal input (and keeps it)."""
        if remote is not None and verify_token is None:
            raise ValueError("a remote attestation service needs verify_token")
        self._nonce_cap = nonce_cap
        self._db = db
        self._keystore = keystore
        self._verifier = verifier
        self._nonce_ttl = nonce_ttl
        self._remote = remote
        self._verify_token = verify_token
        self._inputs = inputs or AppraisalInputs(0)
        self._integrity = integrity

    def _key_and_policy(self, s: Session, key_id: str) -> tuple[ReleasableKey, TransferPolicyBody, str]:
        """The key and its policy, each as an administrator wrote it (their integrity tags verify),
        or refused: a key or policy changed in the database is never released on."""
        row = s.connection().execute(_KEY_AND_POLICY, {"key_id": key_id}).one_or_none()
        if row is None:
            raise NotFound(f"key {key_id} does not exist")
        self._integrity.check(integrity.key_content_of(row), row.integrity_tag)
        if row.transfer_policy_id is None:
            raise Forbidden(
                f"key {key_id} has no transfer policy and is never released",
                reasons=["the key has no transfer policy"],
            )
        assert row.body is not None  # foreign key
        self._integrity.check(integrity.policy_content(row.transfer_policy_id, row.body), row.policy_tag)
        policy = stored_policy(row.body, policy_id=row.transfer_policy_id)
        return ReleasableKey(row.id, row.backend_ref, row.public_key_pem), policy, row.transfer_policy_id

    def _lookup(self, key_id: str) -> tuple[ReleasableKey, TransferPolicyBody, str]:
        with self._db.session() as s:
            return self._key_and_policy(s, key_id)

    def challenge(self, key_id: str) -> Challenge:
        if self._remote is not None:
            return self._remote_challenge(key_id)
        # not durable: a nonce lost in a machine crash only makes the client ask again
        with self._db.session(durable=False) as s:
            key, policy, _ = self._key_and_policy(s, key_id)
            issued = nonces.issue(
                s, purpose=V1_PURPOSE, subject=key_id, ttl=self._nonce_ttl, cap=self._nonce_cap
            )
        return Challenge(issued, policy.attestation_type[0], key.public_key_pem)

    def _remote_challenge(self, key_id: str) -> Challenge:
        """The remote attestation service's nonce, recorded here too (single use, this key)."""
        assert self._remote is not None
        key, policy, _ = self._lookup(key_id)  # an unknown key is refused before the remote is asked
        self._nonce_cap.check_room(datetime.now(UTC))  # and a full cap too
        value, remote_expiry = self._remote.nonce()
        ttl = min(self._nonce_ttl, remote_expiry - datetime.now(UTC))
        if ttl <= timedelta(0):
            raise BackendUnavailable(
                f"the remote attestation service at {self._remote.url} gave an expired nonce"
            )
        with self._db.session(durable=False) as s:
            issued = nonces.issue(
                s, purpose=V1_PURPOSE, subject=key_id, ttl=ttl, value=value, cap=self._nonce_cap
            )
        return Challenge(issued, policy.attestation_type[0], key.public_key_pem)

    def transfer(
        self, key_id: str, req: EvidenceRequest, principal: Principal | None, actor: str
    ) -> wrap.SeclWrapped:
        tee = req.attestation_type.lower()
        # the evidence's digest: the verified evidence's, or (refused before or at verification)
        # computed from the request in the except clause below; the same digest either way
        details: dict[str, Any] = {"protocol": "kbs/v1", "tee": tee}
        explain = explains(principal)
        doc: AppraisalInput | None = None
        spend: _Spend | None = None
        try:
            # Read only: the key, its policy and the nonce. The nonce is spent by the transaction
            # that records the outcome, a release or a denial, so that no crash or outage in
            # between leaves a used nonce without an audited outcome.
            with self._db.session() as s:
                key, policy, policy_id = self._key_and_policy(s, key_id)
                details["policy_id"] = policy_id
                if policy.without_attestation:
                    why = "the key's policy releases without attestation: send only user_data with Attestation-Type NONE"
                    raise PolicyDenied(why, reasons=[why])
                if req.attestation_type not in policy.attestation_type:
                    said = f"Attestation-Type {req.attestation_type} is not allowed by the key's policy"
                    listed = ", ".join(policy.attestation_type)
                    reason = Reason(
                        check="attestation_type",
                        text=f"{said} ({listed})",
                        public=said,
                        presented=req.attestation_type,
                        expected=listed,
                    )
                    raise denied(reason.text if explain else said, [reason], explain=explain)
                at = nonces.check(s, req.nonce, purpose=V1_PURPOSE, subject=key_id)
            spend = _Spend(req.nonce, key_id, at)
            workload_key = _rsa_workload_key(req.user_data, "user_data")
            permissions = None if principal is None else sorted(principal.client_permissions)
            if self._remote is not None:
                details["evidence_sha256"] = self._verifier.evidence_sha256(tee, req.quote)
                doc = self._appraise_remotely(req, permissions, details)
            else:
                verified = self._verifier.verify(tee, req.quote, KbsV1Binding(req.nonce, req.user_data))
                details["evidence_sha256"] = verified.evidence_sha256
                details["claims_sha256"] = claims_digest(verified)
                details["tcb_status"] = verified.status
                doc = appraisal_input(verified, client_permissions=permissions)
            decision = secl.evaluate_input(policy, doc, policy_id=policy_id)
            return self._release_if_allowed(
                decision,
                "the evidence does not satisfy the key's transfer policy",
                key,
                workload_key,
                actor,
                details,
                doc,
                explain=explain,
                spend=spend,
            )
        except KeybrokerError as exc:
            if "evidence_sha256" not in details:
                details["evidence_sha256"] = self._verifier.evidence_sha256(tee, req.quote)
            instead = self._audit_denial(actor, key_id, exc, details, doc, spend)
            if instead is not None:
                raise instead from None
            raise

    def _appraise_remotely(
        self, req: EvidenceRequest, permissions: list[str] | None, details: dict[str, Any]
    ) -> AppraisalInput:
        """The evidence verified at the remote attestation service; its EAR checked here (signature,
        issuer, expiry, and that it binds this nonce and this workload key); the appraisal input
        of the claims the EAR carries, for the key's own policy to be evaluated here."""
        assert self._remote is not None and self._verify_token is not None
        tee = req.attestation_type.lower()
        details["verifier"] = self._remote.url
        token = self._remote.attest(tee, req.quote, req.nonce, req.user_data)
        ear = self._verify_token(token)
        details.update({"token_kid": ear.kid, "ear_status": ear.status})
        if ear.tee != tee:
            raise VerificationError(
                f"the remote attestation service attested {ear.tee.upper()} evidence, not {tee.upper()}",
                check="tee_type",
            )
        if ear.held_data != req.user_data or ear.nonce != base64.b64encode(req.nonce).decode():
            raise VerificationError(
                "the remote attestation service's token does not bind this nonce and workload key",
                check="report_data",
            )
        doc = ear.appraisal_input(client_permissions=permissions)
        details["claims_sha256"] = claims_digest(doc["claims"])
        details["tcb_status"] = doc["tcb"]["status"]
        return doc

    def transfer_passport(
        self,
        key_id: str,
        token: str,
        verify_token: Callable[[str], EarClaims],
        principal: Principal | None,
        actor: str,
    ) -> wrap.SeclWrapped:
        """Passport mode: an attestation token from ``/attestation/v1/attest`` instead of a quote.

        The token carries the verified claims and the user data (the workload key) its evidence
        bound; its nonce was consumed when it was issued. Within its lifetime it may be presented
        again, but the key is always wrapped to the key bound in the evidence, so a replayed token
        yields nothing to anyone else.
        """
        details: dict[str, Any] = {"protocol": "kbs/v1", "mode": "passport"}
        doc: AppraisalInput | None = None
        try:
            key, policy, policy_id = self._lookup(key_id)
            details["policy_id"] = policy_id
            ear = verify_token(token)
            details["token_kid"] = ear.kid
            details["tee"] = ear.tee
            if ear.held_data is None:
                raise InvalidInput(
                    "the attestation token carries no user data (workload key)", field="attestation_token"
                )
            workload_key = _rsa_workload_key(ear.held_data, "attestation_token.user_data")
            doc = ear.appraisal_input(
                client_permissions=None if principal is None else sorted(principal.client_permissions)
            )
            decision = secl.evaluate_input(policy, doc, policy_id=policy_id)
            return self._release_if_allowed(
                decision,
                "the attested claims do not satisfy the key's transfer policy",
                key,
                workload_key,
                actor,
                details,
                doc,
                explain=explains(principal),
            )
        except KeybrokerError as exc:
            self._audit_denial(actor, key_id, exc, details, doc)
            raise

    def transfer_without_attestation(
        self, key_id: str, user_data: bytes, principal: Principal | None, actor: str
    ) -> wrap.SeclWrapped:
        """The "good" tier: a policy with ``attestation_type: ["NONE"]`` releases the key to a caller
        whose token holds every listed client permission, wrapped to the caller's RSA key. No
        evidence is looked at; every such release is audited with a warning."""
        details: dict[str, Any] = {"protocol": "kbs/v1", "mode": "no-attestation", "tier": "good"}
        try:
            key, policy, policy_id = self._lookup(key_id)
            details["policy_id"] = policy_id
            if not policy.without_attestation or policy.none is None:
                why = (
                    "the key's policy requires attestation: send evidence with Attestation-Type "
                    f"{REGISTRY.listing()}"
                )
                raise PolicyDenied(why, reasons=[why])
            if principal is None:
                why = (
                    "a release without attestation needs a bearer token with the policy's client permissions"
                )
                raise PolicyDenied(why, reasons=[why])
            missing = sorted(
                set(policy.none.attributes.client_permissions) - set(principal.client_permissions)
            )
            if missing:
                held = ", ".join(sorted(principal.client_permissions))
                reason = Reason(
                    check="client_permissions",
                    text=f"the token lacks client permission(s) {', '.join(missing)}",
                    public=f"the token (client permissions [{held}]) lacks some the key's policy requires",
                    presented=held,
                    expected=", ".join(missing),
                )
                raise denied(
                    "the caller is not allowed by the key's policy", [reason], explain=explains(principal)
                )
            workload_key = _rsa_workload_key(user_data, "user_data")
            log.warning(
                "key %s released WITHOUT attestation to %s (policy %s, tier good)", key_id, actor, policy_id
            )
            return self._release(
                key,
                workload_key,
                actor,
                details,
                None,
                reason="released without attestation (policy tier good)",
            )
        except KeybrokerError as exc:
            self._audit_denial(actor, key_id, exc, details, None)
            raise

    def _release_if_allowed(
        self,
        decision: Decision,
        denial: str,
        key: ReleasableKey,
        workload_key: rsa.RSAPublicKey,
        actor: str,
        details: dict[str, Any],
        doc: AppraisalInput,
        *,
        explain: bool,
        spend: _Spend | None = None,
    ) -> wrap.SeclWrapped:
        """Release if the policy allowed it; else deny (``denial``) with the decision's reasons, in
        full only if ``explain``."""
        details["notes"] = list(decision.notes)
        if not decision.allowed:
            raise denied(denial, decision.findings, explain=explain)
        return self._release(key, workload_key, actor, details, doc, spend=spend)

    def _release(
        self,
        key: ReleasableKey,
        workload_key: rsa.RSAPublicKey,
        actor: str,
        details: dict[str, Any],
        doc: AppraisalInput | None,
        reason: str | None = None,
        *,
        spend: _Spend | None = None,
    ) -> wrap.SeclWrapped:
        """Spend the nonce, wrap the key to the workload (inside the HSM for HSM keys) and audit
        the release with the appraisal input it was decided on (``doc``; None: released without
        attestation), in one transaction.

        Any failure is raised as a :class:`KeybrokerError`, which the caller audits: an allowed
        release that fails is never an unaudited 500."""
        with self._db.session() as s:
            if spend is not None:
                spend.consume(s)  # used meanwhile by another request: Forbidden, audited by the caller
            try:
                transfer = self._keystore.wrap_for_transfer(s, key.id, key.backend_ref, workload_key, b"")
            except KeybrokerError:
                raise
            except Exception as exc:  # a backend or cryptography failure: recorded, not swallowed
                raise _wrap_failed(key.id, exc) from exc
            wrapped = wrap.secl_from_transfer(transfer)
            self._inputs.append(
                s,
                doc,
                actor=actor,
                action="key.transfer",
                object_id=key.id,
                outcome="success",
                reason=reason,
                details=details,
            )
        return wrapped

    def _audit_denial(
        self,
        actor: str,
        key_id: str,
        exc: KeybrokerError,
        details: dict[str, Any],
        doc: AppraisalInput | None,
        spend: _Spend | None = None,
    ) -> KeybrokerError | None:
        """Audit the refusal ``exc`` with the appraisal input it was decided on (``doc``; None if
        it came before one), spending the request's nonce (if it got that far) in the same
        transaction. A nonce another request used meanwhile makes the refusal that one (a replay,
        as if the nonce had been spent first, so with no input): it is returned, for the caller to
        raise instead."""
        instead: KeybrokerError | None = None
        with self._db.session() as s:
            if spend is not None:
                try:
                    spend.consume(s)
                except Forbidden as refused:
                    exc = instead = refused
                    doc = None
            self._append_denial(s, actor, key_id, exc, details, doc)
        return instead

    def _append_denial(
        self,
        s: Session,
        actor: str,
        key_id: str,
        exc: KeybrokerError,
        details: dict[str, Any],
        doc: AppraisalInput | None,
    ) -> None:
        reasons = (exc.explained if isinstance(exc, PolicyDenied) else getattr(exc, "reasons", None)) or [
            exc.detail
        ]
        if isinstance(exc, EvidenceError) and "check" in exc.extra:
            details["failed_check"] = exc.extra["check"]
        self._inputs.append(
            s,
            doc,
            actor=actor,
            action="key.transfer",
            object_id=key_id,
            outcome="denied" if exc.status in (401, 403) or isinstance(exc, EvidenceError) else "failed",
            reason="; ".join(str(r) for r in reasons),
            details=details,
        )
