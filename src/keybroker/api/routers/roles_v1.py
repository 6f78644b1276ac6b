"""Roles over ``/kbs/v1/roles``: the built-in ones and the custom ones, which callers holding the
``roles:*`` permissions create, change and delete (never with a permission they lack themselves)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from keybroker.api.body import StrictRoute
from keybroker.api.deps import principal, require, services
from keybroker.api.schema import responses
from keybroker.api.services import Services
from keybroker.auth.caller import Caller
from keybroker.auth.roles import MAX_DESCRIPTION, Role
from keybroker.auth.tokens import PERMISSIONS, ROLE_NAME, Principal

router = APIRouter(prefix="/kbs/v1", route_class=StrictRoute, tags=["roles"])

Svc = Annotated[Services, Depends(services)]
RoleName = Annotated[
    str, Path(pattern=ROLE_NAME.pattern, description="a role's name", examples=["key-admin"])
]
_Permission = Annotated[str, Field(json_schema_extra={"enum": list(PERMISSIONS)}, max_length=64)]


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    permissions: list[_Permission] = Field(min_length=1, max_length=len(PERMISSIONS))
    description: str | None = Field(default=None, min_length=1, max_length=MAX_DESCRIPTION)


class RoleCreateIn(RoleIn):
    name: str = Field(pattern=ROLE_NAME.pattern, examples=["release-engineer"])


class RoleOut(BaseModel):
    name: str
    permissions: list[str]
    description: str | None
    builtin: bool = Field(description="built-in roles cannot be changed or deleted")


def _out(r: Role) -> RoleOut:
    return RoleOut(
        name=r.name, permissions=sorted(r.permissions), description=r.description, builtin=r.builtin
    )


@router.get("/roles", response_model=list[RoleOut])
def list_roles(svc: Svc, caller: Caller = Depends(require("roles:search"))) -> list[RoleOut]:
    """The built-in roles, then the custom ones."""
    return [_out(r) for r in svc.roles.list(actor=caller.actor)]


@router.post("/roles", status_code=201, response_model=RoleOut, responses=responses(403, 409))
def create_role(
    body: RoleCreateIn,
    svc: Svc,
    caller: Caller = Depends(require("roles:create")),
    p: Principal = Depends(principal),
) -> RoleOut:
    """A custom role; the caller must hold every permission it grants."""
    role = svc.roles.create(
        body.name, body.permissions, actor=caller.actor, description=body.description, granter=p
    )
    return _out(role)


@router.get("/roles/{role}", response_model=RoleOut, responses=responses(404))
def get_role(role: RoleName, svc: Svc, caller: Caller = Depends(require("roles:search"))) -> RoleOut:
    return _out(svc.roles.get(role, actor=caller.actor))


@router.put("/roles/{role}", response_model=RoleOut, responses=responses(403, 404, 409))
def update_role(
    role: RoleName,
    body: RoleIn,
    svc: Svc,
    caller: Caller = Depends(require("roles:update")),
    p: Principal = Depends(principal),
) -> RoleOut:
    """Replace a custom role's permissions: every token and session naming it gets the new set
    (other replicas within 5 seconds). Built-in roles are 409."""
    return _out(
        svc.roles.update(role, body.permissions, actor=caller.actor, description=body.description, granter=p)
    )


@router.delete("/roles/{role}", status_code=204, responses=responses(403, 404, 409))
def delete_role(
    role: RoleName,
    svc: Svc,
    caller: Caller = Depends(require("roles:delete")),
    p: Principal = Depends(principal),
) -> Response:
    svc.roles.delete(role, actor=caller.actor, granter=p)
    return Response(status_code=204)
