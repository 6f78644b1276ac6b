"""Settings of the organisation's OpenID provider (``[oidc]``), beside the code that uses them (as
``keystores.config`` and ``seal.config``): ``auth`` sits below ``config`` in the layers."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OidcSettings(BaseModel):
    """The organisation's OpenID Connect provider: console sign-in (authorization code + PKCE) and,
    with ``api_audience``, its JWTs as bearer tokens on the API. Roles come from a claim."""

    model_config = ConfigDict(extra="forbid")

    #: The provider's issuer URL, exactly as its discovery document and tokens give it (https only).
    issuer: str = Field(min_length=9, max_length=512)
    client_id: str = Field(min_length=1, max_length=256)
    #: A file holding the client secret (one line); read at start.
    client_secret_file: Path
    #: The CA of the provider's TLS certificate. None: the system's CAs.
    ca_file: Path | None = None
    #: The console's callback as registered with the provider. None: ``<the URL the console was
    #: opened at>/ui/auth/callback`` (the provider refuses any URI not registered).
    redirect_uri: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"], max_length=16)
    #: The claim whose values (a string or a list of strings) are mapped to roles.
    roles_claim: str = Field(default="groups", min_length=1, max_length=128)
    #: Claim value -> keybroker roles. Values not listed grant nothing.
    role_mapping: dict[str, list[str]] = Field(default_factory=dict)
    #: The ``aud`` bearer JWTs must carry to be accepted on the API. None: the API takes none.
    api_audience: str | None = Field(default=None, min_length=1, max_length=512)
    #: How long the provider's signing keys are used before being fetched again, seconds (an
    #: unknown ``kid`` fetches them sooner, at most every 30 s).
    jwks_cache_seconds: int = Field(default=300, ge=10, le=86_400)
    #: Clock skew allowed on ``exp``, ``nbf`` and ``iat``, seconds.
    leeway_seconds: int = Field(default=60, ge=0, le=300)
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)

    @field_validator("issuer", "redirect_uri")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include openid")
        return value
