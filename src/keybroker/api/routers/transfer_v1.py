"""``POST /kbs/v1/keys/{id}/transfer``: the Intel SecL / Trust Authority KBS key-transfer flow."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keybroker.api.body import StrictRoute, decode_json
from keybroker.api.deps import actor_of, bearer
from keybroker.api.problems import validation_detail
from keybroker.api.schema import BASE64_PATTERN, NONCE_PATTERN, json_body, ref, responses
from keybroker.api.services import Services
from keybroker.appraisal.registry import REGISTRY
from keybroker.attestation import nonces
from keybroker.auth.tokens import Principal
from keybroker.errors import InvalidInput
from keybroker.keys.release import EvidenceRequest
from keybroker.keys.service import _check_uuid
from keybroker.keys.wrap import SeclWrapped

router = APIRouter(prefix="/kbs/v1", tags=["transfer"], route_class=StrictRoute)
#: The ``Attestation-Type`` values: every registered TEE's, and NONE (no attestation).
AttestationType = Literal[(*REGISTRY.attestation_types, "NONE")]  # type: ignore[valid-type]
#: The evidence's text: a DCAP quote is at most 64 KiB (its parser says so), a TPM evidence document
#: carries the firmware event log (tens of KiB, more after dbx updates): within the 1 MiB body.
MAX_QUOTE_TEXT = 768 * 1024


class NonceIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    val: str = Field(pattern=NONCE_PATTERN, description="the challenge's nonce (base64, 32 bytes)")


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quote: str | None = Field(
        default=None,
        min_length=4,
        max_length=MAX_QUOTE_TEXT,
        pattern=BASE64_PATTERN,
        description="base64 evidence (background-check mode): a quote; TPM: keybroker's TPM evidence "
        "document; AZ-*: Trustee's JSON",
    )
    nonce: NonceIn | None = None
    user_data: str | None = Field(
        default=None,
        min_length=4,
        max_length=8192,
        pattern=BASE64_PATTERN,
        description="base64 DER SubjectPublicKeyInfo of the workload key",
    )
    event_log: str | None = Field(default=None, max_length=1024 * 1024)
    attestation_token: str | None = Field(default=None, max_length=64 * 1024, description="passport mode")


class NonceOut(BaseModel):
    val: str
    iat: int
    exp: int


class ChallengeOut(BaseModel):
    nonce: NonceOut
    public_key: str | None = Field(
        description="base64 DER SubjectPublicKeyInfo of an RSA or EC key (not secret: a workload compares "
        "it with the key it already holds before it attests); null for a secret (AES, raw)"
    )


def _spki_b64(pem: str | None) -> str | None:
    if pem is None:
        return None
    public = serialization.load_pem_public_key(pem.encode())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


class TransferOut(BaseModel):
    wrapped_key: str
    wrapped_swk: str


def _b64(value: str | None, field: str) -> bytes:
    if not value:
        raise InvalidInput(f"{field} is required", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64", field=field) from None


def _optional_principal(request: Request, svc: Services) -> Principal | None:
    token = bearer(request)
    if token is None:
        return None
    p = svc.authn.verify(token)
    request.state.principal = p
    return p


@router.post(
    "/keys/{key_id}/transfer",
    response_model=None,
    responses={
        200: {
            "description": "a nonce challenge (empty body; the key's policy's type in the Attestation-Type "
            "header) or the wrapped key",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [ref(ChallengeOut, "serialization"), ref(TransferOut, "serialization")]
                    }
                }
            },
        },
        **responses(404, 429, 503),
    },
    # the bearer token is optional: policies with client_permissions need one
    openapi_extra={**json_body(TransferIn, required=False), "security": [{}, {"bearer": []}]},
)
async def transfer_key(
    key_id: str,
    request: Request,
    attestation_type: Annotated[
        AttestationType | None,
        Header(
            alias="Attestation-Type",
            description=f"required with a body: {', '.join(REGISTRY.attestation_types)} or NONE (no attestation)",
        ),
    ] = None,
) -> JSONResponse:
    """Empty body: a fresh nonce and the ``Attestation-Type`` the key's policy wants. Then
    ``{"quote", "nonce", "user_data"}`` with the ``Attestation-Type`` header: the key, wrapped."""
    svc: Services = request.app.state.services
    key_id = _check_uuid(key_id, "key")
    principal = _optional_principal(request, svc)
    raw = await request.body()
    content_type = request.headers.get("content-type")
    # the database and cryptography work is blocking: keep it off the event loop
    return await run_in_threadpool(_transfer, svc, key_id, raw, content_type, attestation_type, principal)


def _transfer(
    svc: Services,
    key_id: str,
    raw: bytes,
    content_type: str | None,
    attestation_type: str | None,
    principal: Principal | None,
) -> JSONResponse:
    if not raw.strip():
        challenge = svc.release.challenge(key_id)
        body = ChallengeOut(
            nonce=NonceOut(
                val=challenge.nonce.b64,
                iat=int(challenge.nonce.issued_at.timestamp()),
                exp=int(challenge.nonce.expires_at.timestamp()),
            ),
            public_key=_spki_b64(challenge.public_key_pem),
        )
        return JSONResponse(body.model_dump(), headers={"Attestation-Type": challenge.attestation_type})
    try:
        req = TransferIn.model_validate(decode_json(raw, content_type))
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        field, detail, _ = validation_detail(RequestValidationError(exc.errors()))
        raise InvalidInput(detail, field=field) from None
    actor = actor_of(principal) if principal is not None else "workload"
    if req.attestation_token is not None:
        if req.quote is not None:
            raise InvalidInput(
                "send either quote (background check) or attestation_token (passport), not both", field="body"
            )
        wrapped = svc.release.transfer_passport(
            key_id, req.attestation_token, svc.attestation.verify_token, principal, actor
        )
        return _out(wrapped)
    if attestation_type is None:
        raise InvalidInput(
            f"the Attestation-Type header ({REGISTRY.listing()}) is required with evidence",
            field="Attestation-Type",
        )
    if attestation_type == "NONE":
        if req.quote is not None or req.nonce is not None:
            raise InvalidInput(
                "Attestation-Type NONE takes only user_data (no quote, no nonce)", field="body"
            )
        return _out(
            svc.release.transfer_without_attestation(
                key_id, _b64(req.user_data, "user_data"), principal, actor
            )
        )
    if attestation_type not in REGISTRY.attestation_types:
        raise InvalidInput(
            f"Attestation-Type {attestation_type!r} is not {REGISTRY.listing()}", field="Attestation-Type"
        )
    if req.nonce is None:
        raise InvalidInput("nonce is required", field="nonce")
    evidence = EvidenceRequest(
        attestation_type=attestation_type,
        quote=_b64(req.quote, "quote"),
        nonce=nonces.decode_nonce(req.nonce.val, "nonce.val"),
        user_data=_b64(req.user_data, "user_data"),
    )
    return _out(svc.release.transfer(key_id, evidence, principal, actor))


def _out(wrapped: SeclWrapped) -> JSONResponse:
    # a response, not a model: FastAPI would validate and serialize the model once more
    return JSONResponse(
        {
            "wrapped_key": base64.b64encode(wrapped.wrapped_key).decode(),
            "wrapped_swk": base64.b64encode(wrapped.wrapped_swk).decode(),
        }
    )
