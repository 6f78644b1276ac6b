"""Request dependencies: the services container and declared permissions."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keybroker.api.services import Services
from keybroker.auth.caller import Caller
from keybroker.auth.tokens import Principal
from keybroker.errors import Forbidden, Unauthenticated


async def services(request: Request) -> Services:
    """The services container (async: no threadpool hop for a dict lookup)."""
    svc: Services = request.app.state.services
    return svc


#: Documents the bearer token in the OpenAPI (``security``); the header is read by :func:`bearer`.
BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a keybroker token (ES384 JWT; see 'keybroker token create'), or a JWT of the configured "
    "OpenID Connect provider",
)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def principal(
    request: Request,
    svc: Services = Depends(services),
    _documented: HTTPAuthorizationCredentials | None = Security(BEARER_SCHEME),
) -> Principal:
    token = bearer(request)
    if token is None:
        raise Unauthenticated("this endpoint needs a bearer token (Authorization: Bearer <token>)")
    p = svc.authn.verify(token)
    request.state.principal = p
    return p


def require(permission: str) -> Callable[..., Caller]:
    """A dependency that admits callers whose token grants ``permission`` (403 otherwise)."""

    def check(request: Request, p: Principal = Depends(principal)) -> Caller:
        if not p.allows(permission):
            raise Forbidden(f"the token lacks the permission {permission}", permission=permission)
        return Caller(actor=actor_of(p))

    check.__name__ = f"require_{permission.replace(':', '_').replace('*', 'all')}"
    return check


def actor_of(p: Principal) -> str:
    """How the audit log names the caller: ``token:<subject>#<jti>``, ``oidc:<sub> <email>`` (the
    person, as the OpenID provider names them) or ``dev:<name>``."""
    if p.source == "oidc":
        return f"oidc:{p.subject}" + (f" <{p.email}>" if p.email else "")
    if p.source == "dev":
        return f"dev:{p.subject}"
    return f"token:{p.subject}" + (f"#{p.token_id}" if p.token_id else "")
