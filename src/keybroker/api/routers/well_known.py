"""``/.well-known``: the public keys that verify keybroker's attestation results (EAR JWTs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from keybroker.api.body import StrictRoute
from keybroker.api.deps import services
from keybroker.api.services import Services

router = APIRouter(prefix="/.well-known", tags=["attestation"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]


@router.get("/jwks.json")
def jwks(svc: Svc) -> dict[str, object]:
    """Public keys that verify keybroker's attestation tokens (current first)."""
    return svc.attestation.jwks()
