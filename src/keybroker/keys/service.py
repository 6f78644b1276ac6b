"""Application services for keys, transfer policies and certificates.

Each public method is one database transaction that also appends its audit record, so a change and
its audit record land together or not at all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.audit import log as audit
from keybroker.auth.caller import Caller
from keybroker.errors import Conflict, InvalidInput, KeybrokerError, NotFound
from keybroker.keys.certs import check_common_name, issue_leaf, issued_by, subject_alt_names
from keybroker.keys.serviceca import ServiceCA
from keybroker.keystores import material as km
from keybroker.keystores.base import KeyStore, StoredKey
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import Certificate, Key, TransferPolicy

log = logging.getLogger("keybroker.keys")


@dataclass(frozen=True)
class CreateKeyRequest:
    algorithm: str
    key_length: int | None
    curve_type: str | None
    key_string: str | None
    kmip_key_id: str | None
    label: str | None
    usage: str | None
    transfer_policy_id: str | None


@dataclass(frozen=True)
class CertificateRequest:
    common_name: str
    sans: list[str]
    validity_days: int
    self_signed: bool


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{what} {value!r} does not exist (not a UUID)") from None


NO_ATTESTATION_WARNING = (
    "this policy releases keys WITHOUT attestation to any caller whose token holds its client permissions "
    '(the "good" tier); the workload\'s integrity is not checked'
)


def _tier(body: TransferPolicyBody) -> dict[str, Any] | None:
    if body.without_attestation:
        log.warning("key-transfer policy without attestation: %s", NO_ATTESTATION_WARNING)
        return {"tier": "good", "warning": NO_ATTESTATION_WARNING}
    return None


class KeyService:
    def __init__(
        self,
        db: Database,
        keystore: KeyStore,
        ca: ServiceCA,
        integrity: RowIntegrity,
        *,
        chain_issuers: Sequence[x509.Certificate] = (),
    ) -> None:
        """``ca`` issues key certificates (the issuing CA, never the broker's TLS anchor);
        ``integrity`` tags every policy and key row written (refused while sealed);
        ``chain_issuers`` are other CAs whose certificates complete the chain of a stored certificate
        they signed (the TLS anchor, for certificates issued before the two were separated)."""
        self._db = db
        self._integrity = integrity
        self._keystore = keystore
        self._ca = ca
        self._chain_issuers = tuple(chain_issuers)

    # --- transfer policies ---------------------------------------------------------------

    def create_policy(self, caller: Caller, body: TransferPolicyBody) -> TransferPolicy:
        now = datetime.now(UTC)
        row = TransferPolicy(
            id=str(uuid.uuid4()), body=body.model_dump(mode="json"), created_at=now, updated_at=now
        )
        self._integrity.tag_policy(row)
        with self._db.session() as s:
            s.add(row)
            audit.append(
                s,
                actor=caller.actor,
                action="policy.create",
                object_id=row.id,
                outcome="success",
                details=_tier(body),
            )
        return row

    def get_policy(self, caller: Caller, policy_id: str) -> TransferPolicy:
        policy_id = _check_uuid(policy_id, "key-transfer policy")
        with self._db.session() as s:
            row = s.get(TransferPolicy, policy_id)
            if row is None:
                raise NotFound(f"key-transfer policy {policy_id} does not exist")
            audit.append(
                s, actor=caller.actor, action="policy.retrieve", object_id=policy_id, outcome="success"
            )
            return row

    def list_policies(self, caller: Caller) -> list[TransferPolicy]:
        with self._db.session() as s:
            rows = list(s.scalars(select(TransferPolicy).order_by(TransferPolicy.created_at)))
            audit.append(
                s, actor=caller.actor, action="policy.search", outcome="success", details={"count": len(rows)}
            )
            return rows

    def update_policy(self, caller: Caller, policy_id: str, body: TransferPolicyBody) -> TransferPolicy:
        policy_id = _check_uuid(policy_id, "key-transfer policy")
        with self._db.session() as s:
            row = s.get(TransferPolicy, policy_id, with_for_update=True)
            if row is None:
                raise NotFound(f"key-transfer policy {policy_id} does not exist")
            row.body = body.model_dump(mode="json")
            row.updated_at = datetime.now(UTC)
            self._integrity.tag_policy(row)
            audit.append(
                s, actor=caller.actor, action="policy.update", object_id=policy_id, outcome="success"
            )
            return row

    def delete_policy(self, caller: Caller, policy_id: str) -> None:
        policy_id = _check_uuid(policy_id, "key-transfer policy")
        with self._db.session() as s:
            row = s.get(TransferPolicy, policy_id, with_for_update=True)
            if row is None:
                raise NotFound(f"key-transfer policy {policy_id} does not exist")
            users = list(s.scalars(select(Key.id).where(Key.transfer_policy_id == policy_id).limit(5)))
            if users:
                raise Conflict(
                    f"key-transfer policy {policy_id} is used by key(s) {', '.join(users)}; delete or re-bind them first",
                    key_ids=users,
                )
            s.delete(row)
            audit.append(
                s, actor=caller.actor, action="policy.delete", object_id=policy_id, outcome="success"
            )

    # --- keys ----------------------------------------------------------------------------

    def create_key(self, caller: Caller, req: CreateKeyRequest) -> Key:
        """Generate, import or register a key.

        Builtin store: metadata, material and audit in one transaction. External stores (vault,
        kmip, pkcs11) are not part of that transaction: the backend is written first, then the
        metadata row and audit record; when that fails the backend object is destroyed again, so
        a key whose material could not be stored is never listed.
        """
        if req.key_string is not None and req.kmip_key_id is not None:
            raise InvalidInput("give key_string or kmip_key_id, not both", field="key_information")
        key_id = str(uuid.uuid4())
        material: km.KeyMaterial | None = None
        spec: km.KeySpec | None = None
        if req.key_string is not None:
            material = km.import_key(req.algorithm, req.key_length, req.curve_type, req.key_string)
            action = "key.import"
        elif req.kmip_key_id is not None:
            action = "key.register"
        else:
            spec = km.normalize_spec(req.algorithm, req.key_length, req.curve_type)
            action = "key.create"
        if self._keystore.external:
            return self._create_external(caller, req, key_id, action, material, spec)
        with self._db.session() as s:
            self._check_policy(s, req.transfer_policy_id)
            if material is not None:
                stored = StoredKey(material.spec, material.public_key_pem, None)
            elif spec is not None:
                stored = StoredKey(spec, None, None)
            else:
                assert req.kmip_key_id is not None
                stored = self._keystore.register(s, key_id, req.kmip_key_id)
            row = self._new_key_row(key_id, req, stored)
            s.add(row)
            s.flush()  # the key row must exist before its material (foreign key)
            if material is not None:
                row.backend_ref = self._keystore.put(s, key_id, material)
            elif spec is not None:
                created = self._keystore.create(s, key_id, spec)
                row.public_key_pem, row.backend_ref = created.public_key_pem, created.backend_ref
            self._integrity.tag_key(row)
            self._audit_create(s, caller, action, row)
        return row

    def _create_external(
        self,
        caller: Caller,
        req: CreateKeyRequest,
        key_id: str,
        action: str,
        material: km.KeyMaterial | None,
        spec: km.KeySpec | None,
    ) -> Key:
        with self._db.session() as s:
            self._check_policy(s, req.transfer_policy_id)
            if material is not None:
                stored = StoredKey(
                    material.spec, material.public_key_pem, self._keystore.put(s, key_id, material)
                )
            elif spec is not None:
                stored = self._keystore.create(s, key_id, spec)
            else:
                assert req.kmip_key_id is not None
                stored = self._keystore.register(s, key_id, req.kmip_key_id)
        try:
            with self._db.session() as s:
                row = self._new_key_row(key_id, req, stored)
                self._integrity.tag_key(row)
                s.add(row)
                self._audit_create(s, caller, action, row)
        except BaseException:
            if action != "key.register":  # a registered key is not ours to destroy
                self._compensate(key_id, stored.backend_ref)
            raise
        return row

    def _compensate(self, key_id: str, backend_ref: str | None) -> None:
        """The metadata row was not written: destroy the backend object we just made."""
        try:
            with self._db.session() as s:
                self._keystore.destroy(s, key_id, backend_ref)
        except KeybrokerError as exc:
            log.error(
                "key %s: the database write failed and the %s object %s could not be destroyed (%s); "
                "'keybroker keystore check' lists it as an orphan",
                key_id,
                self._keystore.name,
                backend_ref,
                exc.title,
            )

    def _check_policy(self, s: Session, transfer_policy_id: str | None) -> None:
        if transfer_policy_id is not None:
            pid = _check_uuid(transfer_policy_id, "key-transfer policy")
            if s.get(TransferPolicy, pid) is None:
                raise InvalidInput(
                    f"transfer_policy_id {pid} does not name an existing policy",
                    field="transfer_policy_id",
                )

    def _new_key_row(self, key_id: str, req: CreateKeyRequest, stored: StoredKey) -> Key:
        return Key(
            id=key_id,
            algorithm=stored.spec.algorithm,
            key_length=stored.spec.key_length,
            curve_type=stored.spec.curve_type,
            label=req.label,
            usage=req.usage,
            transfer_policy_id=req.transfer_policy_id and str(uuid.UUID(req.transfer_policy_id)),
            public_key_pem=stored.public_key_pem,
            keystore=self._keystore.name,
            backend_ref=stored.backend_ref,
            created_at=datetime.now(UTC),
        )

    def _audit_create(self, s: Session, caller: Caller, action: str, row: Key) -> None:
        audit.append(
            s,
            actor=caller.actor,
            action=action,
            object_id=row.id,
            outcome="success",
            details={
                "algorithm": row.algorithm,
                "key_length": row.key_length,
                "curve_type": row.curve_type,
                "keystore": row.keystore,
            },
        )

    def get_key(self, caller: Caller, key_id: str) -> Key:
        key_id = _check_uuid(key_id, "key")
        with self._db.session() as s:
            row = s.get(Key, key_id)
            if row is None:
                raise NotFound(f"key {key_id} does not exist")
            audit.append(s, actor=caller.actor, action="key.retrieve", object_id=key_id, outcome="success")
            return row

    def list_keys(self, caller: Caller, filters: dict[str, Any]) -> list[Key]:
        q = select(Key).order_by(Key.created_at)
        if filters.get("algorithm"):
            q = q.where(Key.algorithm == str(filters["algorithm"]).upper())
        if filters.get("key_length") is not None:
            q = q.where(Key.key_length == filters["key_length"])
        if filters.get("curve_type"):
            curve = str(filters["curve_type"]).lower()
            q = q.where(Key.curve_type == km.CURVE_ALIASES.get(curve, curve))
        if filters.get("transfer_policy_id"):
            q = q.where(Key.transfer_policy_id == filters["transfer_policy_id"])
        with self._db.session() as s:
            rows = list(s.scalars(q))
            audit.append(
                s, actor=caller.actor, action="key.search", outcome="success", details={"count": len(rows)}
            )
            return rows

    def delete_key(self, caller: Caller, key_id: str) -> None:
        key_id = _check_uuid(key_id, "key")
        with self._db.session() as s:
            row = s.get(Key, key_id, with_for_update=True)
            if row is None:
                raise NotFound(f"key {key_id} does not exist")
            self._keystore.destroy(s, key_id, row.backend_ref)
            cert = s.get(Certificate, key_id)
            if cert is not None:
                s.delete(cert)
            s.delete(row)
            audit.append(s, actor=caller.actor, action="key.delete", object_id=key_id, outcome="success")

    # --- certificates --------------------------------------------------------------------

    def certify(self, caller: Caller, key_id: str, req: CertificateRequest) -> Certificate:
        """Issue a certificate for an RSA/EC key, signed by the issuing CA (or self-signed)."""
        key_id = _check_uuid(key_id, "key")
        if not 1 <= req.validity_days <= 3650:
            raise InvalidInput("validity_days must be between 1 and 3650", field="validity_days")
        check_common_name(req.common_name)
        subject_alt_names(req.sans)
        with self._db.session() as s:
            row = s.get(Key, key_id, with_for_update=True)
            if row is None:
                raise NotFound(f"key {key_id} does not exist")
            if row.public_key_pem is None:
                raise InvalidInput(
                    f"key {key_id} is an {row.algorithm} key; certificates need an RSA or EC key"
                )
            public = serialization.load_pem_public_key(row.public_key_pem.encode())
            now = datetime.now(UTC) - timedelta(minutes=5)
            if req.self_signed:
                priv = km.load_private_key(
                    km.KeyMaterial(
                        km.KeySpec(row.algorithm, row.key_length, row.curve_type),  # type: ignore[arg-type]
                        self._keystore.fetch(s, key_id, row.backend_ref),
                        row.public_key_pem,
                    )
                )
                cert = issue_leaf(
                    subject_public_key=priv.public_key(),
                    common_name=req.common_name,
                    sans=req.sans,
                    not_before=now,
                    validity=timedelta(days=req.validity_days),
                    issuer_cert=None,
                    issuer_key=priv,
                )
            else:
                assert isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
                cert = issue_leaf(
                    subject_public_key=public,
                    common_name=req.common_name,
                    sans=req.sans,
                    not_before=now,
                    validity=timedelta(days=req.validity_days),
                    issuer_cert=self._ca.cert,
                    issuer_key=self._ca.key,
                )
            existing = s.get(Certificate, key_id)
            if existing is not None:
                s.delete(existing)
                s.flush()
            crow = Certificate(
                key_id=key_id,
                pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                serial=format(cert.serial_number, "x"),
                not_after=cert.not_valid_after_utc,
                created_at=datetime.now(UTC),
            )
            s.add(crow)
            audit.append(
                s,
                actor=caller.actor,
                action="key.certify",
                object_id=key_id,
                outcome="success",
                details={
                    "serial": crow.serial,
                    "self_signed": req.self_signed,
                    "common_name": req.common_name,
                },
            )
            return crow

    def get_certificate(self, caller: Caller, key_id: str) -> Certificate:
        key_id = _check_uuid(key_id, "key")
        with self._db.session() as s:
            crow = s.get(Certificate, key_id)
            if crow is None:
                if s.get(Key, key_id) is None:
                    raise NotFound(f"key {key_id} does not exist")
                raise NotFound(f"key {key_id} has no certificate; POST one first")
            audit.append(
                s, actor=caller.actor, action="key.certificate.retrieve", object_id=key_id, outcome="success"
            )
            return crow

    def certificate_chain_pem(self, crow: Certificate) -> str:
        """The stored certificate followed by the CA that signed it (none when self-signed)."""
        cert = x509.load_pem_x509_certificate(crow.pem.encode())
        for issuer in (self._ca.cert, *self._chain_issuers):
            if issued_by(cert, issuer):
                return crow.pem + issuer.public_bytes(serialization.Encoding.PEM).decode()
        return crow.pem

    def certificates_issued_by(self, ca: x509.Certificate, *, created_before: datetime) -> list[str]:
        """Ids of the keys whose stored certificate ``ca`` signed, among those stored before
        ``created_before`` (for the start-up check that no key certificate chains to the TLS anchor)."""
        with self._db.session() as s:
            rows = s.execute(
                select(Certificate.key_id, Certificate.pem).where(Certificate.created_at < created_before)
            ).all()
        return [key_id for key_id, pem in rows if issued_by(x509.load_pem_x509_certificate(pem.encode()), ca)]
