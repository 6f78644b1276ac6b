"""``POST /kbs/v1/keys/{id}/transfer``: the Intel SecL / Trust Authority KBS key-transfer flow."""

from __future__ import annotations

import base64
import binascii
from typing import Final, Literal

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keybroker import stages
from keybroker.api.body import StrictRoute, decode_json
from keybroker.api.deps import actor_of, bearer
from keybroker.api.problems import validation_detail
from keybroker.api.schema import BASE64_PATTERN, NONCE_PATTERN, json_body, ref, responses
from keybroker.api.services import Services
from keybroker.api.threads import run_blocking
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


#: The route's parameters as FastAPI documented them when they were function parameters. They are read
#: from the request instead (the key id from the path, :func:`_attestation_type`): FastAPI's parameter
#: machinery cost more than the rest of the request's routing (``bench/transfer.py``).
_KEY_ID_PARAMETER: Final = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "title": "Key Id"},
}
_ATTESTATION_TYPE_VALUES: Final = (*REGISTRY.attestation_types, "NONE")
_ATTESTATION_TYPE_HELP: Final = (
    f"required with a body: {', '.join(REGISTRY.attestation_types)} or NONE (no attestation)"
)
_ATTESTATION_TYPE_PARAMETER: Final = {
    "name": "Attestation-Type",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"enum": list(_ATTESTATION_TYPE_VALUES), "type": "string"}, {"type": "null"}],
        "description": _ATTESTATION_TYPE_HELP,
        "title": "Attestation-Type",
    },
    "description": _ATTESTATION_TYPE_HELP,
}
_LITERAL_MESSAGE: Final = (
    "Input should be "
    + ", ".join(repr(v) for v in _ATTESTATION_TYPE_VALUES[:-1])
    + f" or {_ATTESTATION_TYPE_VALUES[-1]!r}"
)


def _attestation_type(request: Request) -> str | None:
    """The ``Attestation-Type`` header (its first value), None when absent; any other value than the
    registered TEEs' and NONE is the 400 FastAPI gave for its ``Literal`` parameter."""
    value = request.headers.get("attestation-type")
    if value is None or value in _ATTESTATION_TYPE_VALUES:
        return value
    raise RequestValidationError(
        [
            {
                "type": "literal_error",
                "loc": ("header", "Attestation-Type"),
                "msg": _LITERAL_MESSAGE,
                "input": value,
            }
        ]
    )


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
    openapi_extra={
        **json_body(TransferIn, required=False),
        "security": [{}, {"bearer": []}],
        "parameters": [_KEY_ID_PARAMETER, _ATTESTATION_TYPE_PARAMETER],
    },
)
async def transfer_key(request: Request) -> JSONResponse:
    """Empty body: a fresh nonce and the ``Attestation-Type`` the key's policy wants. Then
    ``{"quote", "nonce", "user_data"}`` with the ``Attestation-Type`` header: the key, wrapped."""
    svc: Services = request.app.state.services
    attestation_type = _attestation_type(request)
    key_id = _check_uuid(request.path_params["key_id"], "key")
    principal = _optional_principal(request, svc)
    raw = await request.body()
    content_type = request.headers.get("content-type")
    # the database and cryptography work is blocking: keep it off the event loop
    return await run_blocking(_transfer, svc, key_id, raw, content_type, attestation_type, principal)


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
        with stages.stage("json"):
            body = ChallengeOut(
                nonce=NonceOut(
                    val=challenge.nonce.b64,
                    iat=int(challenge.nonce.issued_at.timestamp()),
                    exp=int(challenge.nonce.expires_at.timestamp()),
                ),
                public_key=_spki_b64(challenge.public_key_pem),
            )
            return JSONResponse(body.model_dump(), headers={"Attestation-Type": challenge.attestation_type})
    req = _parse(raw, content_type)
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
    with stages.stage("parse"):
        evidence = EvidenceRequest(
            attestation_type=attestation_type,
            quote=_b64(req.quote, "quote"),
            nonce=nonces.decode_nonce(req.nonce.val, "nonce.val"),
            user_data=_b64(req.user_data, "user_data"),
        )
    return _out(svc.release.transfer(key_id, evidence, principal, actor))


@stages.timed("parse")
def _parse(raw: bytes, content_type: str | None) -> TransferIn:
    try:
        return TransferIn.model_validate(decode_json(raw, content_type))
    except ValidationError as exc:
        field, detail, _ = validation_detail(RequestValidationError(exc.errors()))
        raise InvalidInput(detail, field=field) from None


@stages.timed("json")
def _out(wrapped: SeclWrapped) -> JSONResponse:
    # a response, not a model: FastAPI would validate and serialize the model once more
    return JSONResponse(
        {
            "wrapped_key": base64.b64encode(wrapped.wrapped_key).decode(),
            "wrapped_swk": base64.b64encode(wrapped.wrapped_swk).decode(),
        }
    )
