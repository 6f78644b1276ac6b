"""Confidential Containers KBS protocol 0.4.0 at ``/kbs/v0`` (the CoCo attestation agent and CDH work unchanged)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from keybroker.api.body import StrictRoute, decode_json
from keybroker.api.deps import bearer, principal, require, services
from keybroker.api.schema import UUID_PATTERN, json_body, ref, responses
from keybroker.api.services import Services
from keybroker.auth.caller import Caller
from keybroker.auth.tokens import Principal
from keybroker.errors import Forbidden, InvalidInput
from keybroker.keys.release import TRANSFER_PERMISSION
from keybroker.resources.service import MAX_RESOURCE, SESSION_TTL, SUPPORTED_TEES, resource_path

router = APIRouter(prefix="/kbs/v0", tags=["kbs-v0"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]
COOKIE = "kbs-session-id"


#: One part of a resource path (repository, type, tag); "." and ".." are refused too.
ResourcePart = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]


class AuthIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    version: str = Field(
        max_length=16, pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", examples=["0.4.0"], description="at most 0.4.0"
    )
    # checked by the service, whose refusal names what it supports
    tee: str = Field(max_length=32, examples=["tdx"], json_schema_extra={"enum": list(SUPPORTED_TEES)})
    extra_params: Any = Field(
        default="",
        alias="extra-params",
        description='"", or an object (or its JSON text) with supported-hash-algorithms',
    )


class AuthOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    nonce: str
    extra_params: Any = Field(alias="extra-params")


class RuntimeDataIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    nonce: str = Field(description="the nonce from /kbs/v0/auth")
    tee_pubkey: dict[str, Any] = Field(
        alias="tee-pubkey", description="the TEE's public key (JWK, RSA or EC)"
    )


class AttestationIn(BaseModel):
    """The KBS protocol's Attestation request (documentation: the route reads the body itself)."""

    model_config = ConfigDict(extra="allow")
    runtime_data: RuntimeDataIn = Field(alias="runtime-data")
    tee_evidence: dict[str, Any] | str = Field(
        alias="tee-evidence", description="{primary_evidence: {quote}, additional_evidence}, or its JSON text"
    )


class TokenOut(BaseModel):
    token: str = Field(description="the attestation result (EAR JWT)")


class ResourceKeyIn(BaseModel):
    """A JSON resource write: serve a keybroker key (documentation: the route reads the body itself)."""

    model_config = ConfigDict(extra="forbid")
    key_id: str = Field(json_schema_extra={"format": "uuid"})


class ResourcePolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transfer_policy_id: str | None = Field(default=None, pattern=UUID_PATTERN)
    rego: str | None = Field(
        default=None, max_length=64 * 1024, description="a Rego module in package keybroker"
    )
    default: bool = Field(default=False, description="back to the default policy (affirming, not simulated)")


async def _json_body(request: Request) -> dict[str, Any]:
    body = decode_json(await request.body(), request.headers.get("content-type"))
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object", field="body")
    return body


# The workload-facing routes (auth, attest, resource) take the services container from the app
# rather than by dependency injection, and answer a JSONResponse rather than a model or dict that
# FastAPI would validate and serialize once more: they run on every transfer.


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


@router.post("/auth", response_model=AuthOut, responses=responses(429, 503))
def auth(body: AuthIn, request: Request) -> JSONResponse:
    """Start a session: a nonce to bind into the evidence, and the ``kbs-session-id`` cookie."""
    challenge = _services(request).kbs_v0.auth(body.version, body.tee, body.extra_params)
    resp = JSONResponse({"nonce": challenge.nonce, "extra-params": challenge.extra_params})
    resp.set_cookie(
        COOKIE,
        challenge.session_id,
        max_age=int(SESSION_TTL.total_seconds()),
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
        path="/kbs/v0",
    )
    return resp


@router.post(
    "/attest",
    response_model=TokenOut,
    responses=responses(401, 403, 503),
    openapi_extra=json_body(AttestationIn),
)
async def attest(
    request: Request, session: Annotated[str | None, Cookie(alias=COOKIE)] = None
) -> JSONResponse:
    """Evidence bound to the session's nonce and the TEE's public key → an attestation token (EAR)."""
    body = await _json_body(request)
    token = await run_in_threadpool(_services(request).kbs_v0.attest, session, body)
    return JSONResponse({"token": token})


@router.get(
    "/resource/{repository}/{rtype}/{tag}",
    response_model=dict[str, str],
    responses=responses(400, 401, 403, 404, 503),
    openapi_extra={"security": [{"bearer": []}, {}]},
)
def get_resource(
    repository: ResourcePart,
    rtype: ResourcePart,
    tag: ResourcePart,
    request: Request,
    session: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> JSONResponse:
    """The resource as a flattened JWE to the attested TEE's key (cookie session or ``Bearer <EAR>``)."""
    path = resource_path(repository, rtype, tag)
    return JSONResponse(_services(request).kbs_v0.get_resource(path, session, bearer(request)))


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _may_serve_keys(request: Request, p: Principal = Depends(principal)) -> None:
    """A JSON body maps a keybroker key into the resource: a second way out for that key, so it
    takes the permission over keys' transfers besides ``resources:write``."""
    if _content_type(request) == "application/json" and not p.allows(TRANSFER_PERMISSION):
        raise Forbidden(
            f"serving a key as a resource needs the permission {TRANSFER_PERMISSION} besides resources:write",
            permission=TRANSFER_PERMISSION,
        )


@router.post(
    "/resource/{repository}/{rtype}/{tag}",
    status_code=204,
    responses=responses(403, 404, 503),
    dependencies=[Depends(_may_serve_keys)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "minLength": 1,
                        "maxLength": MAX_RESOURCE,
                    }
                },
                "application/json": {"schema": ref(ResourceKeyIn)},
            },
        }
    },
)
async def put_resource(
    repository: ResourcePart,
    rtype: ResourcePart,
    tag: ResourcePart,
    request: Request,
    svc: Svc,
    caller: Caller = Depends(require("resources:write")),
) -> Response:
    """Write a resource: the raw bytes (``application/octet-stream``, up to 64 KiB), or
    ``{"key_id": ...}`` (JSON) to serve a keybroker key, which also needs ``keys:transfer``.
    New resources get the default policy."""
    path = resource_path(repository, rtype, tag)
    if _content_type(request) == "application/json":
        body = await _json_body(request)
        key_id = body.get("key_id")
        if set(body) != {"key_id"} or not isinstance(key_id, str):
            raise InvalidInput('a JSON body must be exactly {"key_id": "<uuid>"}', field="key_id")
        await run_in_threadpool(svc.kbs_v0.put_key, path, key_id, caller.actor)
    else:
        await run_in_threadpool(svc.kbs_v0.put_secret, path, await request.body(), caller.actor)
    return Response(status_code=204)


@router.post("/resource-policy/{repository}/{rtype}/{tag}", status_code=204, responses=responses(404))
def set_resource_policy(
    repository: ResourcePart,
    rtype: ResourcePart,
    tag: ResourcePart,
    body: ResourcePolicyIn,
    svc: Svc,
    caller: Caller = Depends(require("resources:write")),
) -> Response:
    """Bind a resource to a key-transfer policy or a Rego policy, or back to the default."""
    chosen = [k for k in ("transfer_policy_id", "rego") if getattr(body, k) is not None] + (
        ["default"] if body.default else []
    )
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of transfer_policy_id, rego or default", field="body")
    policy: dict[str, Any] | None
    if body.default:
        policy = None
    elif body.transfer_policy_id is not None:
        policy = {"transfer_policy_id": body.transfer_policy_id}
    else:
        policy = {"rego": body.rego}
    svc.kbs_v0.set_policy(resource_path(repository, rtype, tag), policy, caller.actor)
    return Response(status_code=204)
