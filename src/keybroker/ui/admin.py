"""The console's Tokens and Roles pages: bearer tokens listed, minted (shown once) and revoked;
custom roles listed, created, changed and deleted.

Each action calls the service ``/kbs/v1/tokens`` and ``/kbs/v1/roles`` call, with the same checks:
the form is read into the API's own body model (``TokenCreateIn``), and nobody grants what they do
not hold (``RoleStore.check_token_grant``, and the role store's own grant check on every change),
as the signed-in person (:func:`keybroker.ui.pages.act`: refusals audited as on the API). A page
offers only what the person may do, and only the permissions and roles they could grant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from keybroker.api.routers.kbs_v1 import TokenCreateIn
from keybroker.api.services import Services
from keybroker.appraisal.trial import validation_errors
from keybroker.auth.caller import Caller
from keybroker.auth.registry import TokenRecord
from keybroker.auth.roles import MAX_DESCRIPTION, Role, not_held
from keybroker.auth.tokens import PERMISSIONS, ROLE_NAME, parse_ttl
from keybroker.errors import Conflict, InvalidInput
from keybroker.ui.forms import Form, StrictFormRoute, form_of
from keybroker.ui.pages import Viewer, act, page, viewer

router = APIRouter(prefix="/ui", route_class=StrictFormRoute, include_in_schema=False)

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SPLIT = re.compile(r"[\s,]+")


def _svc(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def grantable_permissions(v: Viewer) -> list[str]:
    """The permissions ``v`` could put into a token or a role (``*:*`` only from ``*:*``)."""
    return [p for p in PERMISSIONS if not not_held(v.principal, [p])]


def grantable_roles(v: Viewer, roles: Sequence[Role]) -> list[Role]:
    """The roles ``v`` could name in a token: every permission they grant is ``v``'s too."""
    return [r for r in roles if not not_held(v.principal, r.permissions)]


# --- tokens -------------------------------------------------------------------------------------


def _tokens_page(
    request: Request,
    v: Viewer,
    *,
    include_inactive: bool = False,
    status: int = 200,
    errors: Sequence[str] = (),
    form: dict[str, Any] | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    svc = _svc(request)
    rows: list[TokenRecord] = act(
        request,
        v,
        "token.search",
        "tokens:search",
        lambda c: svc.tokens.records(include_inactive=include_inactive, actor=c.actor),
    )
    can_mint = v.can("tokens:create")
    return page(
        request,
        "tokens.html",
        v,
        status=status,
        tokens=rows,
        now=datetime.now(UTC),
        include_inactive=include_inactive,
        permissions=grantable_permissions(v) if can_mint else [],
        roles=grantable_roles(v, svc.roles.list()) if can_mint else [],
        errors=list(errors),
        form=form or {},
        notice=notice,
    )


@router.get("/tokens")
def tokens_page(
    request: Request, include_all: int | None = Query(default=None, alias="all"), revoked: str | None = None
) -> Response:
    """Active tokens (``all=1``: the expired, revoked and retired-key ones on record too)."""
    v = viewer(request)
    notice = f"token {revoked} revoked" if revoked is not None and _UUID.match(revoked) else None
    return _tokens_page(request, v, include_inactive=bool(include_all), notice=notice)


def _token_request(form: Form) -> TokenCreateIn:
    """The form as the API's body, checked by the API's model (its messages)."""
    try:
        return TokenCreateIn.model_validate(
            {
                "subject": form.get("subject") or "",
                "roles": form.many("roles"),
                "permissions": form.many("permissions"),
                "client_permissions": [p for p in _SPLIT.split(form.raw("client_permissions")) if p],
                "ttl": form.get("ttl") or "1h",
            }
        )
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise InvalidInput(errors[0], field="token", errors=errors) from None


@router.post("/tokens")
def token_mint(request: Request) -> Response:
    """As ``POST /kbs/v1/tokens``: the token is shown on the page that answers, once; only its
    record is kept."""
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only(
        {"subject", "roles", "permissions", "client_permissions", "ttl"}, lists={"roles", "permissions"}
    )

    def mint(c: Caller) -> tuple[str, TokenRecord]:
        body = _token_request(form)
        svc.roles.check_token_grant(v.principal, body.permissions, body.roles)
        issued = svc.tokens.issue(
            body.subject,
            body.permissions,
            ttl=parse_ttl(body.ttl),
            client_permissions=body.client_permissions,
            roles=body.roles,
            actor=c.actor,
        )
        return issued.token, svc.tokens.get(issued.jti)

    try:
        token, record = act(request, v, "token.create", "tokens:create", mint)
    except InvalidInput as exc:
        shown = {
            "subject": form.raw("subject"),
            "roles": form.many("roles"),
            "permissions": form.many("permissions"),
            "client_permissions": form.raw("client_permissions"),
            "ttl": form.raw("ttl"),
        }
        return _tokens_page(
            request, v, status=400, errors=exc.extra.get("errors") or [exc.detail], form=shown
        )
    return page(request, "token_minted.html", v, token=token, record=record)


@router.post("/tokens/{jti}/revoke")
def token_revoke(request: Request, jti: str) -> Response:
    """As ``DELETE /kbs/v1/tokens/{jti}``: refused from now on (other replicas within seconds)."""
    v = viewer(request)
    svc = _svc(request)
    reason = form_of(request).only({"reason"}).get("reason")
    act(
        request,
        v,
        "token.revoke",
        "tokens:delete",
        lambda c: svc.tokens.revoke(jti, actor=c.actor, reason=reason),
        object_id=jti[:64],
    )
    return _see(f"/ui/tokens?revoked={jti}")


# --- roles --------------------------------------------------------------------------------------


def _roles_page(
    request: Request,
    v: Viewer,
    *,
    status: int = 200,
    errors: Sequence[str] = (),
    form: dict[str, Any] | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    svc = _svc(request)
    rows: list[Role] = act(request, v, "role.search", "roles:search", lambda c: svc.roles.list(actor=c.actor))
    return page(
        request,
        "roles.html",
        v,
        status=status,
        roles=rows,
        permissions=grantable_permissions(v) if v.can("roles:create") else [],
        max_description=MAX_DESCRIPTION,
        errors=list(errors),
        form=form or {},
        notice=notice,
    )


@router.get("/roles")
def roles_page(request: Request, deleted: str | None = None) -> Response:
    v = viewer(request)
    notice = f"role {deleted} deleted" if deleted is not None and ROLE_NAME.match(deleted) else None
    return _roles_page(request, v, notice=notice)


def _role_fields(form: Form) -> tuple[list[str], str | None]:
    return form.many("permissions"), form.get("description")


@router.post("/roles")
def role_create(request: Request) -> Response:
    """As ``POST /kbs/v1/roles``: the author must hold every permission the role grants."""
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"name", "permissions", "description"}, lists={"permissions"})
    name = form.get("name") or ""
    permissions, description = _role_fields(form)
    try:
        act(
            request,
            v,
            "role.create",
            "roles:create",
            lambda c: svc.roles.create(
                name, permissions, actor=c.actor, description=description, granter=v.principal
            ),
            object_id=name[:64] or None,
        )
    except (InvalidInput, Conflict) as exc:
        shown = {"name": form.raw("name"), "permissions": permissions, "description": form.raw("description")}
        return _roles_page(request, v, status=exc.status, errors=[exc.detail], form=shown)
    return _see(f"/ui/roles/{name}")


def _role_page(
    request: Request,
    v: Viewer,
    role: Role,
    *,
    status: int = 200,
    errors: Sequence[str] = (),
    checked: Sequence[str] | None = None,
    description: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    # a custom role can be changed or deleted only by someone holding all it grants now
    may_touch = not role.builtin and not not_held(v.principal, role.permissions)
    return page(
        request,
        "role.html",
        v,
        status=status,
        role=role,
        may_update=may_touch and v.can("roles:update"),
        may_delete=may_touch and v.can("roles:delete"),
        permissions=grantable_permissions(v),
        checked=sorted(role.permissions) if checked is None else list(checked),
        description=(role.description or "") if description is None else description,
        max_description=MAX_DESCRIPTION,
        errors=list(errors),
        notice=notice,
    )


def _role(request: Request, v: Viewer, name: str) -> Role:
    svc = _svc(request)
    return act(
        request,
        v,
        "role.retrieve",
        "roles:search",
        lambda c: svc.roles.get(name, actor=c.actor),
        object_id=name[:64],
    )


@router.get("/roles/{name}")
def role_page(request: Request, name: str, saved: int | None = None) -> Response:
    v = viewer(request)
    return _role_page(request, v, _role(request, v, name), notice="saved" if saved else None)


@router.post("/roles/{name}")
def role_update(request: Request, name: str) -> Response:
    """As ``PUT /kbs/v1/roles/{role}``: every token and session naming it gets the new set."""
    v = viewer(request)
    svc = _svc(request)
    form = form_of(request).only({"permissions", "description"}, lists={"permissions"})
    permissions, description = _role_fields(form)
    try:
        act(
            request,
            v,
            "role.update",
            "roles:update",
            lambda c: svc.roles.update(
                name, permissions, actor=c.actor, description=description, granter=v.principal
            ),
            object_id=name[:64],
        )
    except (InvalidInput, Conflict) as exc:
        role = svc.roles.get(name)
        return _role_page(
            request,
            v,
            role,
            status=exc.status,
            errors=[exc.detail],
            checked=permissions,
            description=form.raw("description"),
        )
    return _see(f"/ui/roles/{name}?saved=1")


@router.post("/roles/{name}/delete")
def role_delete(request: Request, name: str) -> Response:
    """As ``DELETE /kbs/v1/roles/{role}``, after the name is typed: tokens and sessions naming it
    lose what it granted."""
    v = viewer(request)
    svc = _svc(request)
    confirm = form_of(request).only({"confirm"}).get("confirm")

    def delete(c: Caller) -> None:
        if confirm != name:
            raise InvalidInput("type the role's name to confirm the deletion", field="confirm")
        svc.roles.delete(name, actor=c.actor, granter=v.principal)

    act(request, v, "role.delete", "roles:delete", delete, object_id=name[:64])
    return _see(f"/ui/roles?deleted={name}")
