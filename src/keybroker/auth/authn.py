"""Who is calling: a bearer token (keybroker's own, or a JWT of the configured OpenID provider)
turned into a :class:`~keybroker.auth.tokens.Principal` whose permissions include its roles'.

The issuer decides which verifier a token goes to, and each verifies everything itself (signature
by its own keys, issuer, audience, validity): a token naming the OpenID provider as its issuer is
never checked against keybroker's keys, nor the reverse.
"""

from __future__ import annotations

from typing import Protocol

from keybroker.auth.registry import TokenRegistry
from keybroker.auth.rolestore import RoleStore
from keybroker.auth.tokens import Principal


class BearerVerifier(Protocol):
    """An external issuer of bearer JWTs (:class:`keybroker.auth.oidc.OidcProvider`)."""

    def issued(self, token: str) -> bool:
        """Whether ``token`` names this issuer (unverified: only to pick the verifier)."""
        ...

    def verify_bearer(self, token: str) -> Principal:
        """The principal of a verified token (roles from its claims); Unauthenticated otherwise."""
        ...


class Authenticator:
    def __init__(self, registry: TokenRegistry, roles: RoleStore, oidc: BearerVerifier | None = None) -> None:
        self._registry = registry
        self._roles = roles
        self._oidc = oidc

    def verify(self, token: str) -> Principal:
        if self._oidc is not None and self._oidc.issued(token):
            principal = self._oidc.verify_bearer(token)
        else:
            principal = self._registry.verify(token)
        return self._roles.expand(principal)
