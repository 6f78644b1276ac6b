"""Admin API compatible with the Intel SecL KBS (``/kbs/v1``): keys, transfer policies, audit."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from keybroker import __version__
from keybroker.api.body import StrictRoute
from keybroker.api.deps import actor_of, principal, require, services
from keybroker.api.schema import DB_INT_MAX, UUID_PATTERN, KeyId, PolicyId, Timestamp, responses
from keybroker.api.services import Services
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.audit import log as audit
from keybroker.audit.checkpoint import raw_public
from keybroker.auth.caller import Caller
from keybroker.auth.registry import TokenRecord
from keybroker.auth.tokens import MAX_ROLES, ROLE_NAME, Principal, parse_ttl
from keybroker.errors import Forbidden, NotFound
from keybroker.keys.service import CertificateRequest, CreateKeyRequest
from keybroker.keystores.material import AES_LENGTHS, RSA_LENGTHS
from keybroker.store.models import Certificate, Key, TransferPolicy

router = APIRouter(prefix="/kbs/v1", route_class=StrictRoute)
ROLE_PATTERN = ROLE_NAME.pattern


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyInformationIn(_In):
    # algorithm and key_length are checked by the key service, whose refusals say what fits together
    algorithm: str = Field(
        min_length=1,
        max_length=16,
        examples=["RSA"],
        description="AES, RSA or EC (any case)",
        json_schema_extra={"pattern": "^([Aa][Ee][Ss]|[Rr][Ss][Aa]|[Ee][Cc])$"},
    )
    key_length: (
        Annotated[StrictInt, Field(json_schema_extra={"enum": [*AES_LENGTHS, *RSA_LENGTHS]})] | None
    ) = Field(default=None, examples=[3072], description="AES 128/192/256, RSA 2048/3072/4096")
    curve_type: str | None = Field(default=None, max_length=32, examples=["secp384r1"])
    #: Import: PEM private key (RSA/EC) or base64 (AES).
    key_string: str | None = Field(default=None, max_length=64 * 1024)
    #: Register a key that already lives in an external key manager.
    kmip_key_id: str | None = Field(default=None, min_length=1, max_length=512)


class KeyCreateIn(_In):
    key_information: KeyInformationIn
    label: str | None = Field(default=None, max_length=256)
    usage: str | None = Field(default=None, max_length=256)
    transfer_policy_id: str | None = Field(default=None, pattern=UUID_PATTERN)


class KeyInformationOut(BaseModel):
    id: str
    algorithm: str
    key_length: int | None
    curve_type: str | None
    kmip_key_id: str | None
    public_key: str | None = Field(description="PEM SubjectPublicKeyInfo (RSA and EC keys)")


class KeyOut(BaseModel):
    key_information: KeyInformationOut
    transfer_policy_id: str | None
    transfer_link: str
    created_at: Timestamp
    label: str | None
    usage: str | None


class PolicyOut(TransferPolicyBody):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    created_at: Timestamp
    updated_at: Timestamp


class CertificateIn(_In):
    common_name: str = Field(
        min_length=1, max_length=64, examples=["nginx.example.com"], description="at most 64 bytes in UTF-8"
    )
    sans: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=100,
        examples=[["nginx.example.com", "bücher.example", "*.svc.example", "192.0.2.7", "2001:db8::7"]],
    )
    validity_days: StrictInt = Field(default=365, ge=1, le=3650)
    self_signed: StrictBool = False


class CertificateOut(BaseModel):
    key_id: str
    serial: str
    not_after: Timestamp
    certificate: str = Field(
        description="PEM certificate followed by the CA that signed it (ca/issuing-ca.pem; none when self-signed)"
    )


class VersionOut(BaseModel):
    name: str
    version: str


def _key_out(request: Request, row: Key) -> KeyOut:
    return KeyOut(
        key_information=KeyInformationOut(
            id=row.id,
            algorithm=row.algorithm,
            key_length=row.key_length,
            curve_type=row.curve_type,
            kmip_key_id=row.backend_ref if row.keystore != "builtin" else None,
            public_key=row.public_key_pem,
        ),
        transfer_policy_id=row.transfer_policy_id,
        transfer_link=str(request.base_url).rstrip("/") + f"/kbs/v1/keys/{row.id}/transfer",
        created_at=row.created_at,
        label=row.label,
        usage=row.usage,
    )


def _policy_out(row: TransferPolicy) -> PolicyOut:
    return PolicyOut(**row.body, id=row.id, created_at=row.created_at, updated_at=row.updated_at)


Svc = Annotated[Services, Depends(services)]


@router.get("/version", response_model=VersionOut, tags=["meta"])
def version() -> VersionOut:
    return VersionOut(name="keybroker", version=__version__)


# --- keys ------------------------------------------------------------------------------------


@router.post("/keys", status_code=201, response_model=KeyOut, tags=["keys"], responses=responses(503))
def create_key(request: Request, body: KeyCreateIn, svc: Svc, p: Principal = Depends(principal)) -> KeyOut:
    """Generate a key (``keys:create``), or import one (``key_string``) or register an external one
    (``kmip_key_id``), both ``keys:register`` as in Intel SecL."""
    info = body.key_information
    needed = "keys:register" if info.key_string is not None or info.kmip_key_id is not None else "keys:create"
    if not p.allows(needed):
        raise Forbidden(f"the token lacks the permission {needed}", permission=needed)
    caller = Caller(actor_of(p))
    row = svc.keys.create_key(
        caller,
        CreateKeyRequest(
            algorithm=info.algorithm,
            key_length=info.key_length,
            curve_type=info.curve_type,
            key_string=info.key_string,
            kmip_key_id=info.kmip_key_id,
            label=body.label,
            usage=body.usage,
            transfer_policy_id=body.transfer_policy_id,
        ),
    )
    return _key_out(request, row)


@router.get("/keys", response_model=list[KeyOut], tags=["keys"], responses=responses(503))
def search_keys(
    request: Request,
    svc: Svc,
    caller: Caller = Depends(require("keys:search")),
    algorithm: str | None = Query(default=None, pattern="^([Aa][Ee][Ss]|[Rr][Ss][Aa]|[Ee][Cc])$"),
    key_length: int | None = Query(default=None, alias="keyLength", ge=1, le=16384),
    curve_type: str | None = Query(default=None, alias="curveType", pattern="^[A-Za-z0-9-]{1,32}$"),
    transfer_policy_id: str | None = Query(default=None, alias="transferPolicyId", pattern=UUID_PATTERN),
) -> list[KeyOut]:
    rows = svc.keys.list_keys(
        caller,
        {
            "algorithm": algorithm,
            "key_length": key_length,
            "curve_type": curve_type,
            "transfer_policy_id": transfer_policy_id,
        },
    )
    return [_key_out(request, r) for r in rows]


@router.get("/keys/{key_id}", response_model=KeyOut, tags=["keys"], responses=responses(404, 503))
def retrieve_key(
    request: Request, key_id: KeyId, svc: Svc, caller: Caller = Depends(require("keys:retrieve"))
) -> KeyOut:
    return _key_out(request, svc.keys.get_key(caller, key_id))


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"], responses=responses(404, 503))
def delete_key(key_id: KeyId, svc: Svc, caller: Caller = Depends(require("keys:delete"))) -> Response:
    svc.keys.delete_key(caller, key_id)
    return Response(status_code=204)


@router.post(
    "/keys/{key_id}/certificate",
    status_code=201,
    response_model=CertificateOut,
    tags=["keys"],
    responses=responses(404, 503),
)
def certify_key(
    key_id: KeyId, body: CertificateIn, svc: Svc, caller: Caller = Depends(require("keys:certify"))
) -> CertificateOut:
    """Issue an X.509 certificate for an RSA/EC key, signed by the issuing CA (``ca/issuing-ca.pem``,
    never the TLS anchor that clients of the broker pin) or self-signed. ``sans``: DNS names
    (internationalized ones are converted to A-labels; ``*.`` only as a whole leftmost label) and IP
    addresses (no zone id); without them the common name is the one name."""
    crow = svc.keys.certify(
        caller,
        key_id,
        CertificateRequest(body.common_name, list(body.sans), body.validity_days, body.self_signed),
    )
    return _cert_out(svc, crow)


@router.get(
    "/keys/{key_id}/certificate", response_model=CertificateOut, tags=["keys"], responses=responses(404, 503)
)
def get_certificate(
    key_id: KeyId, svc: Svc, caller: Caller = Depends(require("keys:retrieve"))
) -> CertificateOut:
    return _cert_out(svc, svc.keys.get_certificate(caller, key_id))


def _cert_out(svc: Services, crow: Certificate) -> CertificateOut:
    return CertificateOut(
        key_id=crow.key_id,
        serial=crow.serial,
        not_after=crow.not_after,
        certificate=svc.keys.certificate_chain_pem(crow),
    )


# --- key-transfer policies ------------------------------------------------------------------------


@router.post(
    "/key-transfer-policies",
    status_code=201,
    response_model=PolicyOut,
    tags=["policies"],
    responses=responses(503),
)
def create_policy(
    body: TransferPolicyBody, svc: Svc, caller: Caller = Depends(require("key_transfer_policies:create"))
) -> PolicyOut:
    return _policy_out(svc.keys.create_policy(caller, body))


@router.get(
    "/key-transfer-policies", response_model=list[PolicyOut], tags=["policies"], responses=responses(503)
)
def search_policies(
    svc: Svc, caller: Caller = Depends(require("key_transfer_policies:search"))
) -> list[PolicyOut]:
    return [_policy_out(r) for r in svc.keys.list_policies(caller)]


@router.get(
    "/key-transfer-policies/{policy_id}",
    response_model=PolicyOut,
    tags=["policies"],
    responses=responses(404, 503),
)
def retrieve_policy(
    policy_id: PolicyId, svc: Svc, caller: Caller = Depends(require("key_transfer_policies:retrieve"))
) -> PolicyOut:
    return _policy_out(svc.keys.get_policy(caller, policy_id))


@router.put(
    "/key-transfer-policies/{policy_id}",
    response_model=PolicyOut,
    tags=["policies"],
    responses=responses(404, 503),
)
def update_policy(
    policy_id: PolicyId,
    body: TransferPolicyBody,
    svc: Svc,
    caller: Caller = Depends(require("key_transfer_policies:update")),
) -> PolicyOut:
    return _policy_out(svc.keys.update_policy(caller, policy_id, body))


@router.delete(
    "/key-transfer-policies/{policy_id}",
    status_code=204,
    tags=["policies"],
    responses=responses(404, 409, 503),
)
def delete_policy(
    policy_id: PolicyId, svc: Svc, caller: Caller = Depends(require("key_transfer_policies:delete"))
) -> Response:
    svc.keys.delete_policy(caller, policy_id)
    return Response(status_code=204)


# --- bearer tokens ---------------------------------------------------------------------------------


class TokenOut(BaseModel):
    """A recorded bearer token (the token itself is never stored nor shown again)."""

    jti: str = Field(description="the token's id: what to revoke")
    subject: str
    permissions: list[str]
    roles: list[str] = Field(description="roles it names, resolved to permissions each time it is used")
    client_permissions: list[str]
    issued_at: datetime
    expires_at: datetime
    issued_by: str
    key_id: str = Field(description="kid of the key that signed it")
    status: Literal["active", "expired", "revoked", "key retired"]
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None


def _token_out(r: TokenRecord, now: datetime) -> TokenOut:
    return TokenOut(
        jti=r.jti,
        subject=r.subject,
        permissions=list(r.permissions),
        roles=list(r.roles),
        client_permissions=list(r.client_permissions),
        issued_at=r.issued_at,
        expires_at=r.expires_at,
        issued_by=r.issued_by,
        key_id=r.key_id,
        status=r.status(now),
        revoked_at=r.revoked_at,
        revoked_by=r.revoked_by,
        revoke_reason=r.revoke_reason,
    )


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"])
def search_tokens(
    svc: Svc,
    caller: Caller = Depends(require("tokens:search")),
    include_inactive: bool = Query(
        default=False, alias="all", description="also the expired, revoked and retired-key tokens on record"
    ),
) -> list[TokenOut]:
    """The bearer tokens on record: every token that works is listed (the active ones by default)."""
    now = datetime.now(UTC)
    return [
        _token_out(r, now) for r in svc.tokens.records(include_inactive=include_inactive, actor=caller.actor)
    ]


_TOKEN_SUBJECT = r"^[A-Za-z0-9_.@:\-]{1,128}$"  # noqa: S105 - a pattern
_PERMISSION = Annotated[str, Field(min_length=3, max_length=64)]


class TokenCreateIn(_In):
    subject: str = Field(pattern=_TOKEN_SUBJECT, examples=["ci-deployer"], description="who it is for")
    roles: list[Annotated[str, Field(pattern=ROLE_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_ROLES, examples=[["key-admin"]]
    )
    permissions: list[_PERMISSION] = Field(default_factory=list, max_length=64, examples=[["keys:search"]])
    client_permissions: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]] = Field(
        default_factory=list, max_length=64, examples=[["nginx", "USA"]]
    )
    ttl: str = Field(default="1h", pattern=r"^[0-9]{1,6}[smhd]$", description="30m, 1h, 7d (at most 366d)")


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the bearer token: shown only now, never stored")


@router.post(
    "/tokens", status_code=201, response_model=TokenCreatedOut, tags=["tokens"], responses=responses(403)
)
def create_token(
    body: TokenCreateIn,
    svc: Svc,
    caller: Caller = Depends(require("tokens:create")),
    p: Principal = Depends(principal),
) -> TokenCreatedOut:
    """Mint a token with roles and/or permissions. The caller must hold every permission it grants
    (through the roles too): ``tokens:create`` alone mints nothing more than its holder has."""
    svc.roles.check_token_grant(p, body.permissions, body.roles)
    issued = svc.tokens.issue(
        body.subject,
        body.permissions,
        ttl=parse_ttl(body.ttl),
        client_permissions=body.client_permissions,
        roles=body.roles,
        actor=caller.actor,
    )
    record = svc.tokens.get(issued.jti)
    return TokenCreatedOut(**_token_out(record, datetime.now(UTC)).model_dump(), token=issued.token)


@router.delete("/tokens/{jti}", status_code=204, tags=["tokens"], responses=responses(404))
def revoke_token(
    jti: Annotated[str, Path(description="the token's id (a UUID)", json_schema_extra={"format": "uuid"})],
    svc: Svc,
    caller: Caller = Depends(require("tokens:delete")),
    reason: str | None = Query(default=None, min_length=1, max_length=256),
) -> Response:
    """Revoke a token by its ``jti``: refused from now on (by other replicas within 5 seconds)."""
    svc.tokens.revoke(jti, actor=caller.actor, reason=reason)
    return Response(status_code=204)


# --- audit -------------------------------------------------------------------------------------------


class AuditRecordOut(BaseModel):
    seq: int
    time: str
    actor: str
    action: str
    object_id: str | None
    outcome: str
    reason: str | None
    details: dict[str, Any] | None
    prev_hash: str
    hash: str
    sig: str | None = Field(
        description="Ed25519 signature of hash by the record key (base64); null while sealed"
    )


@router.get("/audit", response_model=list[AuditRecordOut], tags=["audit"])
def read_audit(
    svc: Svc,
    caller: Caller = Depends(require("audit:read")),
    after: int = Query(
        default=0, ge=0, le=DB_INT_MAX, description="return records with seq greater than this"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[AuditRecordOut]:
    with svc.db.session() as s:
        return [AuditRecordOut(**audit.to_dict(r)) for r in audit.iter_records(s, after=after, limit=limit)]


class CheckpointOut(BaseModel):
    seq: int = Field(description="the last audit record the checkpoint covers (0: the empty chain)")
    hash: str = Field(description="that record's hash: it fixes every record up to it")
    time: str
    signed_from: int = Field(description="the first record that must carry a signature")
    record_key: str | None = Field(description="the record signing key, raw Ed25519 public key (base64)")
    key_id: str = Field(description="the checkpoint key: SHA-256 of its raw public key, first 16 bytes, hex")
    public_key: str = Field(
        description="the checkpoint key, raw Ed25519 public key (base64); pin it out of band"
    )
    sig: str = Field(
        description="Ed25519 over 'keybroker/audit-checkpoint/v1\\n' + JCS of the other fields but public_key"
    )
    line: str = Field(description="the checkpoint as written to the checkpoint file")


@router.get("/audit/checkpoint", response_model=CheckpointOut, tags=["audit"])
def read_audit_checkpoint(svc: Svc, caller: Caller = Depends(require("audit:read"))) -> CheckpointOut:
    """This replica's newest signed checkpoint of the audit chain head."""
    cp = svc.checkpointer.latest
    if cp is None:
        raise NotFound("this replica has written no audit checkpoint yet")
    body = cp.body()
    return CheckpointOut(
        seq=cp.seq,
        hash=cp.hash,
        time=body["time"],
        signed_from=cp.signed_from,
        record_key=cp.record_key,
        key_id=cp.key_id,
        public_key=base64.b64encode(raw_public(svc.checkpointer.signer.public_key)).decode(),
        sig=cp.sig,
        line=cp.to_json(),
    )
