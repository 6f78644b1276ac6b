from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from keybroker.auth.tokens import TokenService, parse_ttl
from keybroker.errors import InvalidInput, Unauthenticated


@pytest.fixture
def service() -> TokenService:
    return TokenService(ECKey.generate_key("P-384", private=True))


def test_round_trip_and_permissions(service: TokenService) -> None:
    p = service.verify(service.mint("alice", ["keys:create"], client_permissions=["nginx", "USA"]))
    assert p.subject == "alice"
    assert p.allows("keys:create") and not p.allows("keys:delete")
    assert p.client_permissions == {"nginx", "USA"}
    assert service.verify(service.mint("root", ["*:*"])).allows("audit:read")


def test_expired_and_future(service: TokenService) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    with pytest.raises(Unauthenticated, match="expired"):
        service.verify(service.mint("a", ["*:*"], ttl=timedelta(hours=1), now=past))
    future = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(Unauthenticated, match="not valid yet"):
        service.verify(service.mint("a", ["*:*"], now=future))


def test_foreign_key_and_tampering_rejected(service: TokenService) -> None:
    other = TokenService(ECKey.generate_key("P-384", private=True))
    with pytest.raises(Unauthenticated):
        service.verify(other.mint("a", ["*:*"]))
    token = service.mint("a", ["keys:search"])
    head, body, sig = token.split(".")
    with pytest.raises(Unauthenticated):
        service.verify(".".join([head, body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1], sig]))
    with pytest.raises(Unauthenticated):
        service.verify("not-a-token")


def test_alg_none_and_hs256_rejected(service: TokenService) -> None:
    from joserfc.jwk import OctKey

    claims = {
        "iss": "keybroker",
        "aud": "keybroker",
        "sub": "x",
        "permissions": ["*:*"],
        "exp": 2**40,
        "nbf": 0,
    }
    hs = jwt.encode({"alg": "HS256"}, claims, OctKey.generate_key(256), algorithms=["HS256"])
    with pytest.raises(Unauthenticated):
        service.verify(hs)


def test_unknown_permission_refused(service: TokenService) -> None:
    with pytest.raises(InvalidInput, match="unknown permission"):
        service.mint("a", ["keys:frobnicate"])
    with pytest.raises(InvalidInput):
        service.mint("a", ["keys:search"], client_permissions=["has space"])


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1", "1w", "-1h", "0s", "400d"])
def test_parse_ttl_bad(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_ttl(text)
