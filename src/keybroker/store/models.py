"""SQLAlchemy models. The schema itself is owned by the Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SealConfig(Base):
    """The single row that describes how the root key is protected."""

    __tablename__ = "seal_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "shamir" or "devfile" (auto-unseal from a key file in the data dir).
    seal_type: Mapped[str] = mapped_column(String(32))
    shares: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[int] = mapped_column(Integer)
    #: AES-256-GCM(unseal key, root key), nonce || ciphertext || tag.
    encrypted_root_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TransferPolicy(Base):
    __tablename__ = "transfer_policies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: HMAC-SHA256 of what the row decides, under a key derived from the root key
    #: (``keybroker.seal.integrity``); None for a row not adopted yet (never released on).
    integrity_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Key(Base):
    __tablename__ = "keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(8))
    key_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    curve_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    usage: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: None: no policy, the key is never released.
    transfer_policy_id: Mapped[str | None] = mapped_column(ForeignKey("transfer_policies.id"), nullable=True)
    public_key_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    keystore: Mapped[str] = mapped_column(String(16))
    #: The backend's id for the material (KMIP id, Vault path, PKCS#11 label); None for builtin.
    backend_ref: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: HMAC-SHA256 of what the row decides, under a key derived from the root key
    #: (``keybroker.seal.integrity``); None for a row not adopted yet (never released on).
    integrity_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)


class KeyMaterial(Base):
    """Built-in keystore: the key sealed under its own data key, the data key under the root key."""

    __tablename__ = "key_material"

    key_id: Mapped[str] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class Certificate(Base):
    __tablename__ = "certificates"

    key_id: Mapped[str] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"), primary_key=True)
    pem: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecord(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: Ed25519 signature of ``hash`` by the record key under the seal (base64); None for records
    #: written while sealed or before signing began (``AuditHead.signed_from``).
    sig: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AuditHead(Base):
    """One row holding the chain head, locked while a record is appended (serializes replicas)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))
    #: The first record that must be signed (records before it predate signing). Anchored by the
    #: checkpoints, which repeat it: a change here alone is detected.
    signed_from: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=1)


class Nonce(Base):
    """A server nonce: single use, short-lived. Only its SHA-256 is stored."""

    __tablename__ = "nonces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KbsSession(Base):
    """A /kbs/v0 (Confidential Containers KBS protocol) session."""

    __tablename__ = "kbs_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    tee: Mapped[str] = mapped_column(String(32))
    hash_alg: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The attestation result issued for this session; resource requests with the cookie use it.
    ear_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    tee_pubkey: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class KbsResource(Base):
    """A /kbs/v0 resource: an opaque secret (sealed like key material) or a keybroker key."""

    __tablename__ = "kbs_resources"

    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(ForeignKey("keys.id", ondelete="CASCADE"), nullable=True)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: None: the default resource policy.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: HMAC-SHA256 of what the row decides, under a key derived from the root key
    #: (``keybroker.seal.integrity``); None for a row not adopted yet (never released on).
    integrity_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SigningKey(Base):
    """Attestation-token signing keys; the private part sealed under the root key."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    sealed_private: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CollateralItem(Base):
    """One piece of Intel DCAP collateral, as PCCS serves it, kept with its history.

    ``kind``: ``tcb_info`` (per TEE and FMSPC), ``qe_identity`` (per TEE), ``qve_identity``,
    ``pck_crl`` (per PCK CA) or ``root_ca_crl``. Every row was verified to chain to a trusted root
    (``root_sha256``) before it was stored; ``digest`` (SHA-256 over the signed content and the
    issuer chain's DER) is unique, so re-importing is a no-op.
    """

    __tablename__ = "collateral_items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    tee: Mapped[str | None] = mapped_column(String(8), nullable=True)
    fmspc: Mapped[str | None] = mapped_column(String(12), nullable=True)
    pck_ca: Mapped[str | None] = mapped_column(String(16), nullable=True)
    pce_id: Mapped[str | None] = mapped_column(String(4), nullable=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: TCB Info / enclave identity: the exact signed JSON text and the raw 64-byte signature.
    signed_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: CRLs: DER.
    crl_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: PEM, signer first, ending at the root; None for the root CA CRL (signed by the root itself).
    issuer_chain: Mapped[str | None] = mapped_column(Text, nullable=True)
    issue_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tcb_evaluation_data_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    root_sha256: Mapped[str] = mapped_column(String(64))
    #: "intel" (the pinned Intel SGX Root CA) or "dev" (an explicitly configured dev root).
    root_kind: Mapped[str] = mapped_column(String(8))
    #: Where it came from: "file:<name>", "fetch:<url>", "bundle:<name>", "api".
    source: Mapped[str] = mapped_column(String(512))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SharedSecret(Base):
    """A secret every replica shares (a service CA's key, the token signing key): its public half in
    clear (a certificate, a public key), its private half sealed under the root key
    (``keybroker.seal.shared``; AES-256-GCM, bound to the name and the public half)."""

    __tablename__ = "shared_secrets"

    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    public: Mapped[str] = mapped_column(Text)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BearerTokenKey(Base):
    """A key that signs bearer tokens: its public half (the private one is sealed in
    ``shared_secrets`` and kept in the data dirs for the local CLI). One is current
    (``retired_at`` None); tokens of a retired key are refused."""

    __tablename__ = "bearer_token_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BearerToken(Base):
    """A bearer token the broker issued: what it grants and whether it was revoked. Only tokens on
    record are accepted. The token itself is not stored (it is a credential; its id is not)."""

    __tablename__ = "bearer_tokens"

    jti: Mapped[str] = mapped_column(String(36), primary_key=True)
    kid: Mapped[str] = mapped_column(ForeignKey("bearer_token_keys.kid"))
    subject: Mapped[str] = mapped_column(String(128))
    permissions: Mapped[list[str]] = mapped_column(JSON)
    client_permissions: Mapped[list[str]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Who had it issued: "operator" (sys init), "cli:<user>", or a token's actor.
    issued_by: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: Roles the token names (resolved to permissions each time it is used); [] for none.
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)


class Role(Base):
    """A custom role: a named set of permissions (the built-in roles live in the code)."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    permissions: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(256))


class ConsoleSession(Base):
    """A web console session, or a sign-in under way (``state`` "pending").

    The browser holds a random secret in a cookie; only its SHA-256 is stored (``id``), so the table
    holds nothing that signs anyone in. Who the person is and which roles they have comes from the
    OpenID provider (or the dev login); the roles are resolved to permissions at each request.
    """

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: "pending" (sent to the OpenID provider, not back yet) or "active".
    state: Mapped[str] = mapped_column(String(16))
    #: "oidc" or "dev".
    source: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(String(256), nullable=True)
    email: Mapped[str | None] = mapped_column(String(256), nullable=True)
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Pending sign-ins: the OAuth state, the OpenID nonce and the PKCE code verifier.
    oidc_state: Mapped[str | None] = mapped_column(String(128), nullable=True)
    oidc_nonce: Mapped[str | None] = mapped_column(String(128), nullable=True)
    oidc_verifier: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The absolute end (the idle timeout ends it earlier).
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SnpCollateralItem(Base):
    """One piece of AMD SEV-SNP collateral as AMD's KDS serves it, kept with its history.

    ``kind``: ``snp_vcek`` (a VCEK, by product, hwID and REPORTED_TCB), ``snp_cert_chain`` (ASK+ARK
    or ASVK+ARK, by product and ``signing_key`` side) or ``snp_crl`` (the ARK's CRL, by product and
    side). Every row was verified to chain to a trusted ARK (``ark_spki_sha256``) before it was
    stored; ``digest`` is unique, so re-importing is a no-op.
    """

    __tablename__ = "snp_collateral_items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: "vcek" or "vlek": the side (a chain or CRL of VCEKs or of VLEKs); "vcek" for a VCEK.
    signing_key: Mapped[str] = mapped_column(String(4))
    #: "Milan", "Genoa" or "Turin".
    product: Mapped[str] = mapped_column(String(8))
    #: VCEK: the hwID, lowercase hex (64 bytes; 8 on Turin). Else None.
    hwid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: VCEK: the TCB_VERSION it was issued for, lowercase hex of the 8 bytes (= REPORTED_TCB).
    tcb: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: VCEK: DER; cert chain: PEM (intermediate, then the trusted ARK); CRL: DER.
    content: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: Certificates: notBefore..notAfter (a chain: of both); CRL: thisUpdate..nextUpdate.
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: SHA-256 of the trusted ARK's SubjectPublicKeyInfo.
    ark_spki_sha256: Mapped[str] = mapped_column(String(64))
    #: "amd" (a pinned AMD ARK) or "dev" (an explicitly configured dev root).
    root_kind: Mapped[str] = mapped_column(String(8))
    #: SHA-256 of the ASK/ASVK DER: a VCEK's issuer, a chain's intermediate; None for a CRL.
    intermediate_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Where it came from: "file:<name>", "fetch:<url>", "bundle:<name>".
    source: Mapped[str] = mapped_column(String(512))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TpmAk(Base):
    """A TPM attestation key enrolled through its EK (``keybroker.tpmaks``): trusted once approved."""

    __tablename__ = "tpm_aks"

    #: The AK's Name (nameAlg || H(TPMT_PUBLIC)), hex.
    name: Mapped[str] = mapped_column(String(132), primary_key=True)
    #: TPMT_PUBLIC of the AK and of the EK, the EK certificate (DER).
    public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate: Mapped[bytes] = mapped_column(LargeBinary)
    ek_issuer: Mapped[str] = mapped_column(String(512))
    #: "manufacturer" or "dev" (a dev EK root, trusted only under --dev).
    ek_root: Mapped[str] = mapped_column(String(16))
    ek_root_sha256: Mapped[str] = mapped_column(String(64))
    #: "pending", "approved" or "revoked".
    status: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    enrolled_by: Mapped[str] = mapped_column(String(256))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    approved_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: HMAC-SHA256 of what the row decides (``keybroker.seal.integrity``): an approved AK is trusted
    #: only with one that verifies.
    integrity_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TpmEnrolment(Base):
    """An enrolment under way: the credential made for the AK with ``TPM2_MakeCredential``, waiting
    for the TPM to return its secret. Only the secret's SHA-256 is kept; single use, short-lived."""

    __tablename__ = "tpm_enrolments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ak_name: Mapped[str] = mapped_column(String(132))
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate: Mapped[bytes] = mapped_column(LargeBinary)
    ek_issuer: Mapped[str] = mapped_column(String(512))
    ek_root: Mapped[str] = mapped_column(String(16))
    ek_root_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class TpmAkClock(Base):
    """The latest TPMS_CLOCK_INFO seen per AK (SHA-256 of its SPKI): a quote whose counters went
    back is a claim policies deny (``tee.tpm.trust.AkRegistry.observe``)."""

    __tablename__ = "tpm_ak_clocks"

    ak: Mapped[str] = mapped_column(String(64), primary_key=True)
    clock: Mapped[int] = mapped_column(BigInteger)
    reset_count: Mapped[int] = mapped_column(BigInteger)
    restart_count: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AppraisalInputRecord(Base):
    """The appraisal input document of a recent attempt (a key transfer, a ``/kbs/v0`` release, an
    attestation), kept so that a policy can be tested on it later (the console's *Test this
    policy*). Only the newest ``[audit] appraisal_inputs`` are kept.

    The document is what the policy saw: the TEE's verified claims (measurements, TCB, report
    data), the TCB status, ``sim`` and the caller's client permissions; never evidence, nonces or
    key material. Its SHA-256 (JCS) is in the audit record ``audit_seq``'s details
    (``input_sha256``), which the chain and the record's signature protect, so a document changed
    in the database is recognised as such.
    """

    __tablename__ = "appraisal_inputs"

    audit_seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The audit record's action: key.transfer, resource.release or attestation.attest.
    action: Mapped[str] = mapped_column(String(32))
    tee: Mapped[str] = mapped_column(String(32))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: SHA-256 of the document's JCS form (RFC 8785), as the audit record names it.
    sha256: Mapped[str] = mapped_column(String(64))
