"""Enrolling TPM attestation keys through their EK, and administering them (list, approve, revoke).

Enrolment is the Keylime registrar's and TCG's way of tying an AK to a genuine TPM:

1. :meth:`TpmAkService.start_enrolment`: the machine sends its EK (TPM2B_PUBLIC), the EK certificate
   and its AK (TPM2B_PUBLIC). The EK certificate must chain to a configured TPM manufacturer root
   (``tpm.ek_roots``; under ``--dev`` also ``tpm.dev_ek_roots``, e.g. swtpm's local CA) and certify
   that EK; the AK must be a restricted signing key bound to its TPM. keybroker makes a random
   secret into a credential for the AK's Name protected to the EK (``TPM2_MakeCredential``,
   ``tee.tpm.credential``) and keeps only the secret's SHA-256, for a few minutes.
2. :meth:`TpmAkService.activate`: the machine returns the secret, which only
   ``TPM2_ActivateCredential`` in the TPM holding both the EK and that AK recovers. One attempt: a
   wrong secret ends the enrolment. The AK is registered (its Name, public area, EK certificate, who
   enrolled it), ``pending`` until an administrator approves it, or ``approved`` at once when the
   enrolling caller may approve AKs.

Each use case is one transaction with its audit record (``tpm.ak.*``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import delete, select

from keybroker.audit import log as audit
from keybroker.errors import Conflict, EvidenceParseError, InvalidInput, NotFound, VerificationError
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import TpmAk, TpmAkClock, TpmEnrolment
from keybroker.tee.tpm.abi import TpmPublic, parse_tpm2b_public, parse_tpmt_public
from keybroker.tee.tpm.certs import CertChain, load_certificate, name_of
from keybroker.tee.tpm.credential import make_ak_challenge, verify_ek_certificate
from keybroker.tee.tpm.trust import EkRoot

__all__ = ["AkRecord", "Enrolment", "TpmAkService"]

#: The secret the TPM recovers (at most the EK nameAlg's digest size: SHA-256 EKs are the rule).
_SECRET_BYTES: Final = 32
_MAX_LABEL: Final = 128
Status = Literal["pending", "approved", "revoked"]


@dataclass(frozen=True)
class Enrolment:
    """What the machine gets back from :meth:`TpmAkService.start_enrolment`."""

    id: str
    #: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, for TPM2_ActivateCredential.
    credential_blob: bytes
    encrypted_secret: bytes
    ak_name: str
    expires_at: datetime


@dataclass(frozen=True)
class AkRecord:
    name: str
    status: Status
    label: str | None
    key_type: str
    attributes: tuple[str, ...]
    ek_issuer: str
    ek_root: EkRoot
    ek_root_sha256: str
    enrolled_by: str
    enrolled_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    revoked_by: str | None
    revoked_at: datetime | None
    revoke_reason: str | None
    #: The AK's TPMT_PUBLIC and the EK certificate (DER).
    public: bytes
    ek_certificate: bytes

    def to_dict(self) -> dict[str, Any]:
        def ts(t: datetime | None) -> str | None:
            return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")

        return {
            "name": self.name,
            "status": self.status,
            "label": self.label,
            "key_type": self.key_type,
            "attributes": list(self.attributes),
            "ek_issuer": self.ek_issuer,
            "ek_root": self.ek_root,
            "ek_root_sha256": self.ek_root_sha256,
            "enrolled_by": self.enrolled_by,
            "enrolled_at": ts(self.enrolled_at),
            "approved_by": self.approved_by,
            "approved_at": ts(self.approved_at),
            "revoked_by": self.revoked_by,
            "revoked_at": ts(self.revoked_at),
            "revoke_reason": self.revoke_reason,
        }


def _record(row: TpmAk) -> AkRecord:
    public = parse_tpmt_public(row.public)
    return AkRecord(
        name=row.name,
        status=row.status,  # type: ignore[arg-type]
        label=row.label,
        key_type=public.key_type,
        attributes=public.attribute_names,
        ek_issuer=row.ek_issuer,
        ek_root=row.ek_root,  # type: ignore[arg-type]
        ek_root_sha256=row.ek_root_sha256,
        enrolled_by=row.enrolled_by,
        enrolled_at=row.enrolled_at,
        approved_by=row.approved_by,
        approved_at=row.approved_at,
        revoked_by=row.revoked_by,
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
        public=row.public,
        ek_certificate=row.ek_certificate,
    )


def ak_clock_key(public: TpmPublic) -> str:
    """The AK's key in the clock table: SHA-256 of its DER SPKI (as the verifier names it)."""
    spki = public.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_ak_name(name: str) -> str:
    """A Name in hex as the API and the CLI take it (lower case)."""
    text = name.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) - 2 not in (20, 32, 48, 64):
        raise InvalidInput(f"{name!r} is not an AK Name (hex of nameAlg || digest)", field="name")
    return text


def _aware(t: datetime) -> datetime:
    """SQLite gives naive datetimes (stored in UTC), PostgreSQL aware ones."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _split(store: Sequence[x509.Certificate]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    return [c for c in store if c.issuer == c.subject], [c for c in store if c.issuer != c.subject]


class TpmAkService:
    """Enrolment and administration of TPM attestation keys."""

    def __init__(
        self,
        db: Database,
        *,
        ek_roots: Mapping[str, Sequence[x509.Certificate]],
        dev_ek_roots: Sequence[x509.Certificate] = (),
        ttl: timedelta = timedelta(minutes=5),
        random: Any = os.urandom,
        integrity: RowIntegrity | None = None,
    ) -> None:
        """``dev_ek_roots``: trusted only when given (the server gives them in dev mode only).
        ``integrity``: tags each AK approved (the server's, unsealed); without it (the CLI on the
        data dir's database) nothing can be approved, only listed and revoked."""
        self._db = db
        self._integrity = integrity
        self._ek_roots = {vendor: tuple(certs) for vendor, certs in ek_roots.items()}
        self._dev_ek_roots = tuple(dev_ek_roots)
        self._ttl = ttl
        self._random = random

    def _tags(self) -> RowIntegrity:
        if self._integrity is None:
            raise InvalidInput(
                "an AK is approved by the unsealed server (its approval is tagged under the root key): "
                "use 'keybroker tpm ak approve' with the server running, or POST /kbs/v1/tpm/aks/{name}/approval",
                field="name",
            )
        return self._integrity

    # --- enrolment ----------------------------------------------------------------------------

    def _ek_chain(self, certificate: bytes, ek: TpmPublic, at: datetime) -> tuple[CertChain, EkRoot, str]:
        """The EK certificate's chain to a manufacturer root (or a dev one): (chain, kind, vendor)."""
        if not self._ek_roots and not self._dev_ek_roots:
            raise VerificationError(
                "no TPM manufacturer root is configured (tpm.ek_roots): AKs cannot be enrolled",
                check="ek_certificate",
            )
        failures: list[str] = []
        stores: list[tuple[str, EkRoot, tuple[x509.Certificate, ...]]] = [
            (vendor, "manufacturer", certs) for vendor, certs in self._ek_roots.items()
        ]
        if self._dev_ek_roots:
            stores.append(("dev", "dev", self._dev_ek_roots))
        for vendor, kind, store in stores:
            anchors, intermediates = _split(store)
            try:
                chain = verify_ek_certificate(
                    certificate, ek, intermediates=intermediates, roots=anchors, at=at
                )
            except VerificationError as exc:
                failures.append(f"{vendor}: {exc.detail}")
                continue
            return chain, kind, vendor
        raise VerificationError(
            "the EK certificate chains to no configured TPM manufacturer root (" + "; ".join(failures) + ")",
            check="ek_certificate",
        )

    def start_enrolment(
        self,
        *,
        ek_public: bytes,
        ek_certificate: bytes,
        ak_public: bytes,
        label: str | None,
        actor: str,
    ) -> Enrolment:
        """Check the EK and the AK, and make the credential only that TPM can activate."""
        if label is not None and not 1 <= len(label) <= _MAX_LABEL:
            raise InvalidInput(f"label must be 1 to {_MAX_LABEL} characters", field="label")
        try:
            ek = parse_tpm2b_public(ek_public, name="ek_public")
            ak = parse_tpm2b_public(ak_public, name="ak_public")
        except EvidenceParseError as exc:
            raise InvalidInput(exc.detail, field=exc.field) from None
        now = datetime.now(UTC)
        chain, kind, vendor = self._ek_chain(ek_certificate, ek, now)
        secret = self._random(_SECRET_BYTES)
        blob, encrypted = make_ak_challenge(ek, ak, secret)
        name = ak.name.hex()
        enrolment_id = str(uuid.uuid4())
        expires = now + self._ttl
        leaf = load_certificate(ek_certificate, "EK certificate", "ek_certificate")
        with self._db.session() as s:
            s.execute(delete(TpmEnrolment).where(TpmEnrolment.expires_at < now))
            existing = s.get(TpmAk, name)
            if existing is not None:
                raise Conflict(
                    f"the AK {name} is enrolled already ({existing.status})"
                    + ("; a revoked AK stays revoked: make a new AK" if existing.status == "revoked" else "")
                )
            s.add(
                TpmEnrolment(
                    id=enrolment_id,
                    ak_name=name,
                    ak_public=ak.raw,
                    ek_public=ek.raw,
                    ek_certificate=leaf.public_bytes(Encoding.DER),
                    ek_issuer=(leaf.issuer.rfc4514_string() or name_of(chain.certs[-1]))[:512],
                    ek_root=kind,
                    ek_root_sha256=chain.root_sha256,
                    label=label,
                    secret_sha256=hashlib.sha256(secret).hexdigest(),
                    created_by=actor,
                    created_at=now,
                    expires_at=expires,
                )
            )
            audit.append(
                s,
                actor=actor,
                action="tpm.ak.enrol",
                object_id=name,
                outcome="success",
                details={"enrolment": enrolment_id, "ek_root": kind, "ek_vendor": vendor, "label": label},
            )
        return Enrolment(enrolment_id, blob, encrypted, name, expires)

    def activate(self, enrolment_id: str, secret: bytes, *, actor: str, approve: bool) -> AkRecord:
        """The TPM's answer: the AK is registered (approved at once when ``approve``: the caller may
        approve AKs). A wrong secret ends the enrolment."""
        now = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(TpmEnrolment, enrolment_id, with_for_update=True)
            if row is None or row.created_by != actor or _aware(row.expires_at) < now:
                raise NotFound(f"no enrolment {enrolment_id} of yours under way (it expired, or was used)")
            if not hmac.compare_digest(hashlib.sha256(secret).hexdigest(), row.secret_sha256):
                s.delete(row)
                wrong = True
            else:
                wrong = False
        if wrong:
            raise VerificationError(
                "the secret is not the credential's: the TPM that holds this EK does not hold this AK; the "
                "enrolment is over, start again",
                check="activate_credential",
            )
        with self._db.session() as s:
            row = s.get(TpmEnrolment, enrolment_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no enrolment {enrolment_id} of yours under way (it expired, or was used)")
            if s.get(TpmAk, row.ak_name) is not None:
                raise Conflict(f"the AK {row.ak_name} is enrolled already")
            ak = TpmAk(
                name=row.ak_name,
                public=row.ak_public,
                ek_public=row.ek_public,
                ek_certificate=row.ek_certificate,
                ek_issuer=row.ek_issuer,
                ek_root=row.ek_root,
                ek_root_sha256=row.ek_root_sha256,
                status="approved" if approve else "pending",
                label=row.label,
                enrolled_by=actor,
                enrolled_at=now,
                approved_by=actor if approve else None,
                approved_at=now if approve else None,
            )
            if approve:
                self._tags().tag_ak(ak)
            s.add(ak)
            s.delete(row)
            audit.append(
                s,
                actor=actor,
                action="tpm.ak.activate",
                object_id=ak.name,
                outcome="success",
                details={"enrolment": enrolment_id, "status": ak.status, "ek_root": ak.ek_root},
            )
            s.flush()
            return _record(ak)

    # --- administration -----------------------------------------------------------------------

    def list(self, *, status: str | None = None, actor: str | None = None) -> list[AkRecord]:
        if status is not None and status not in ("pending", "approved", "revoked"):
            raise InvalidInput("status is pending, approved or revoked", field="status")
        with self._db.session() as s:
            query = select(TpmAk).order_by(TpmAk.enrolled_at, TpmAk.name)
            if status is not None:
                query = query.where(TpmAk.status == status)
            rows = list(s.scalars(query))
            if actor is not None:
                audit.append(s, actor=actor, action="tpm.ak.search", outcome="success")
            return [_record(r) for r in rows]

    def get(self, name: str, *, actor: str | None = None) -> AkRecord:
        name = check_ak_name(name)
        with self._db.session() as s:
            row = s.get(TpmAk, name)
            if row is None:
                raise NotFound(f"no AK {name} is enrolled")
            if actor is not None:
                audit.append(s, actor=actor, action="tpm.ak.retrieve", object_id=name, outcome="success")
            return _record(row)

    def approve(self, name: str, *, actor: str) -> AkRecord:
        """Trust a pending AK. Approving an approved AK again forgets its clock history (after a
        TPM2_Clear reset its counters); a revoked AK stays revoked."""
        name = check_ak_name(name)
        now = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(TpmAk, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no AK {name} is enrolled")
            if row.status == "revoked":
                raise Conflict(f"the AK {name} was revoked by {row.revoked_by}; a revoked AK stays revoked")
            again = row.status == "approved"
            row.status, row.approved_by, row.approved_at = "approved", actor, now
            self._tags().tag_ak(row)
            key = ak_clock_key(parse_tpmt_public(row.public))
            s.execute(delete(TpmAkClock).where(TpmAkClock.ak == key))
            audit.append(
                s,
                actor=actor,
                action="tpm.ak.approve",
                object_id=name,
                outcome="success",
                details={"again": again, "clock_history_forgotten": True},
            )
            return _record(row)

    def revoke(self, name: str, *, actor: str, reason: str | None = None) -> AkRecord:
        """Never trust this AK again (whatever certificate it may also carry). Its clock history
        goes in the same transaction: it protects only an AK still trusted, and a revoked AK stays
        revoked (its row stays, so it cannot be enrolled again). Revoking again removes a history
        left by a broker from before this rule."""
        name = check_ak_name(name)
        if reason is not None and not 1 <= len(reason) <= 512:
            raise InvalidInput("reason must be 1 to 512 characters", field="reason")
        now = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(TpmAk, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no AK {name} is enrolled")
            if row.status != "revoked":
                row.status, row.revoked_by, row.revoked_at, row.revoke_reason = "revoked", actor, now, reason
            key = ak_clock_key(parse_tpmt_public(row.public))
            forgotten = s.execute(
                delete(TpmAkClock).where(TpmAkClock.ak == key).returning(TpmAkClock.ak)
            ).first()
            audit.append(
                s,
                actor=actor,
                action="tpm.ak.revoke",
                object_id=name,
                outcome="success",
                reason=reason,
                details={"clock_history_forgotten": forgotten is not None},
            )
            return _record(row)
