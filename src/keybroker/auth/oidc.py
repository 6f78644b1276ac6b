"""The organisation's OpenID Connect provider: console sign-in and bearer JWTs on the API.

Sign-in is the authorization code flow with PKCE (S256), a ``state`` bound to the browser and an
OpenID ``nonce`` (the console keeps the three, :mod:`keybroker.ui.sessions`); the ID token that
comes back from the token endpoint is verified here: signature by a key of the provider's JWKS,
``iss``, ``aud`` (the client id), ``azp``, ``exp``/``iat``, ``nonce`` and ``at_hash`` (Authlib's
``CodeIDToken`` rules). Bearer JWTs on the API (``api_audience`` configured) are verified the same
way against ``api_audience``, as Vault's JWT auth does with ``bound_audiences``.

The discovery document must name the configured issuer exactly; the JWKS is fetched from its
``jwks_uri`` and kept for ``jwks_cache_seconds``; a token signed by a key not in it fetches it again
at most every :data:`FORCED_REFRESH_SECONDS` (so tokens with made-up ``kid`` values cannot make the
broker hammer the provider). Only asymmetric algorithms are accepted (:data:`ALGORITHMS`): never
``none``, never an HMAC keyed with something public.

Who someone is (``sub``, ``email``, ``name``) and their roles come from the verified claims:
``roles_claim`` (e.g. ``groups``) mapped through ``role_mapping``; a value that is not mapped grants
nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from keybroker.auth.config import OidcSettings
from keybroker.auth.tokens import Principal
from keybroker.errors import BackendUnavailable, InvalidInput, Unauthenticated

log = logging.getLogger("keybroker.auth.oidc")

#: Signature algorithms accepted on ID tokens and bearer JWTs (asymmetric only).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: The discovery document is fetched again after this long, seconds.
METADATA_SECONDS = 3600.0
FORCED_REFRESH_SECONDS = 30.0
#: Longer tokens are refused before any parsing.
MAX_TOKEN_CHARS = 16 * 1024
#: Bounds on what the audit log and the session keep of a person.
MAX_CLAIM_CHARS = 256
_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")


@dataclass(frozen=True)
class Identity:
    """A person as the provider vouched for them (verified claims), and the roles they map to."""

    subject: str
    email: str | None
    name: str | None
    roles: tuple[str, ...]


def _segment(token: str, index: int) -> dict[str, Any] | None:
    """A JWT's header (0) or payload (1), unverified; None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    raw = parts[index]
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        return None
    return value[:MAX_CLAIM_CHARS]


class OidcProvider:
    def __init__(
        self,
        conf: OidcSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conf = conf
        self._clock = clock
        self._monotonic = monotonic
        try:
            secret = conf.client_secret_file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(
                f"oidc.client_secret_file: cannot read {conf.client_secret_file}: {exc.strerror}",
                field="oidc.client_secret_file",
            ) from None
        if not secret:
            raise InvalidInput(
                f"oidc.client_secret_file: {conf.client_secret_file} is empty",
                field="oidc.client_secret_file",
            )
        self._secret = secret
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(conf.ca_file)) if conf.ca_file else True
        )
        self._http = httpx.Client(verify=verify, timeout=conf.timeout_seconds, follow_redirects=False)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = float("-inf")
        self._keys: KeySet | None = None
        self._keys_at = float("-inf")
        self._forced_at = float("-inf")

    @property
    def issuer(self) -> str:
        return self.conf.issuer

    # --- the provider's documents -----------------------------------------------------------

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            r = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"the OpenID provider's {what} ({url}) is unreachable: {type(exc).__name__}"
            ) from None
        if r.status_code != 200:
            raise BackendUnavailable(f"the OpenID provider's {what} ({url}) answered HTTP {r.status_code}")
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise BackendUnavailable(f"the OpenID provider's {what} ({url}) is not a JSON object")
        return doc

    def metadata(self) -> dict[str, Any]:
        """The discovery document (cached): it must name the configured issuer, and https endpoints."""
        now = self._monotonic()
        with self._lock:
            if self._metadata is not None and now - self._metadata_at < METADATA_SECONDS:
                return self._metadata
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(url, "discovery document")
        if doc.get("issuer") != self.issuer:
            raise BackendUnavailable(
                f"the OpenID provider's discovery document names the issuer {doc.get('issuer')!r}, not the "
                f"configured {self.issuer!r}"
            )
        for name in _ENDPOINTS:
            value = doc.get(name)
            if not isinstance(value, str) or not value.startswith("https://"):
                raise BackendUnavailable(f"the OpenID provider's {name} is not an https:// URL: {value!r}")
        with self._lock:
            self._metadata, self._metadata_at = doc, now
        return doc

    def _key_set(self, kid: str | None) -> KeySet:
        """The provider's JWKS: cached; fetched again when ``kid`` is not in it (rate-limited)."""
        now = self._monotonic()
        with self._lock:
            keys, fresh = self._keys, now - self._keys_at < self.conf.jwks_cache_seconds
            known = keys is not None and (kid is None or any(k.kid == kid for k in keys.keys))
            may_force = now - self._forced_at >= FORCED_REFRESH_SECONDS
        if keys is not None and fresh and (known or not may_force):
            return keys
        doc = self._get_json(self.metadata()["jwks_uri"], "JWKS")
        try:
            fetched = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise BackendUnavailable(f"the OpenID provider's JWKS does not parse: {exc}") from None
        with self._lock:
            self._keys, self._keys_at = fetched, now
            if fresh:
                self._forced_at = now
        return fetched

    # --- tokens --------------------------------------------------------------------------------

    def issued(self, token: str) -> bool:
        """Whether the token names this provider as its issuer (unverified: to choose a verifier)."""
        if len(token) > MAX_TOKEN_CHARS:
            return False
        payload = _segment(token, 1)
        return payload is not None and payload.get("iss") == self.issuer

    def _decode(self, token: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims of a JWT whose signature verifies with a key of the provider's JWKS."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"the {what} is longer than {MAX_TOKEN_CHARS} characters")
        header = _segment(token, 0)
        if header is None:
            raise Unauthenticated(f"the {what} is not a JWT")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"the {what} is signed with {alg!r}; accepted: {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated(f"the {what}'s kid is not a string")
        keys = self._key_set(kid)
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            raise Unauthenticated(f"the {what} was not signed by a key of the OpenID provider ({kid!r})")
        if kid is None and len(keys.keys) != 1:
            raise Unauthenticated(f"the {what} names no key (kid) and the provider has several")
        try:
            decoded = jwt.decode(token, keys, algorithms=[alg])
        except (JoseError, ValueError, TypeError):
            raise Unauthenticated(f"the {what}'s signature does not verify") from None
        return dict(decoded.header), dict(decoded.claims)

    def verify_bearer(self, token: str) -> Principal:
        """A bearer JWT of this provider: signature, ``iss``, ``aud`` = ``api_audience``, ``exp``,
        ``nbf``, ``iat``; roles from ``roles_claim``."""
        audience = self.conf.api_audience
        if audience is None:
            raise Unauthenticated(
                "bearer tokens of the OpenID provider are not accepted here (no oidc.api_audience)"
            )
        _, claims = self._decode(token, "bearer token")
        registry = JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self.conf.leeway_seconds,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthenticated(
                f"the bearer token is not valid here: {exc.description or exc.error}"
            ) from None
        ident = self._identity(claims)
        return Principal(
            subject=ident.subject,
            permissions=frozenset(),
            token_id=_text(claims, "jti"),
            roles=frozenset(ident.roles),
            source="oidc",
            email=ident.email,
        )

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_CLAIM_CHARS:
            raise Unauthenticated(f"the token's sub is not a string of 1 to {MAX_CLAIM_CHARS} characters")
        return Identity(subject, _text(claims, "email"), _text(claims, "name"), self.roles_of(claims))

    def roles_of(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The roles ``role_mapping`` gives the values of ``roles_claim`` (a string or a list)."""
        value = claims.get(self.conf.roles_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles: set[str] = set()
        for v in values:
            if isinstance(v, str):
                roles.update(self.conf.role_mapping.get(v, ()))
        return tuple(sorted(roles))

    # --- sign-in (authorization code + PKCE) ----------------------------------------------------

    def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str) -> str:
        return str(
            prepare_grant_uri(
                self.metadata()["authorization_endpoint"],
                client_id=self.conf.client_id,
                response_type="code",
                redirect_uri=redirect_uri,
                scope=" ".join(self.conf.scopes),
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(code_verifier),
                code_challenge_method="S256",
            )
        )

    def exchange(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str) -> Identity:
        """Redeem the authorization code (client_secret_basic, the PKCE verifier) and verify the ID
        token that comes back."""
        endpoint = self.metadata()["token_endpoint"]
        try:
            r = self._http.post(
                endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
                auth=(self.conf.client_id, self._secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"the OpenID provider's token endpoint is unreachable: {type(exc).__name__}"
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise Unauthenticated(
                f"the OpenID provider refused the sign-in (token endpoint HTTP {r.status_code}"
                + (f", {str(error)[:64]}" if error else "")
                + ")"
            )
        id_token, access_token = body.get("id_token"), body.get("access_token")
        if not isinstance(id_token, str):
            raise Unauthenticated("the OpenID provider returned no ID token")
        header, claims = self._decode(id_token, "ID token")
        checked = CodeIDToken(
            claims,
            header,
            options={
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.conf.client_id},
            },
            params={
                "nonce": nonce,
                "client_id": self.conf.client_id,
                "access_token": access_token if isinstance(access_token, str) else None,
            },
        )
        try:
            checked.validate(now=int(self._clock()), leeway=self.conf.leeway_seconds)
        except JoseError as exc:
            raise Unauthenticated(f"the ID token is not valid: {exc.description or exc.error}") from None
        return self._identity(claims)
