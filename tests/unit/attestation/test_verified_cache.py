"""The cache of verified EARs: a hit answers what verify_ear would, and only then."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from tests.helpers.sim_evidence import AT, SimEvidence

from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input
from keybroker.attestation.ear import Keyring, VerifiedEarCache, issue_ear, verify_ear
from keybroker.errors import Unauthenticated

ISSUER = "https://keybroker.test"
TTL = dt.timedelta(minutes=5)
RUNTIME = {"nonce": "bm9uY2U=", "tee-pubkey": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"}}


def _issue(keyring: Keyring, sim: SimEvidence, **kw: Any) -> str:
    v = sim.verify("tdx")
    args: dict[str, Any] = {
        "nonce": "bm9uY2U=",
        "user_data": None,
        "runtime_data": RUNTIME,
        "issuer": ISSUER,
        "ttl": TTL,
        "now": AT,
    }
    args.update(kw)
    return issue_ear(
        keyring, v, default_attestation_policy(appraisal_input(v, client_permissions=None)), **args
    )


def test_signed_and_verified_tokens_answer_as_verify_ear(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    signed = _issue(ring, sim)
    assert cache.claims(ring, signed, now=AT, issuer=ISSUER) is None  # not known yet
    assert cache.add_signed(ring, signed, issuer=ISSUER) == verify_ear(ring, signed, now=AT, issuer=ISSUER)
    assert cache.claims(ring, signed, now=AT, issuer=ISSUER) == verify_ear(
        ring, signed, now=AT, issuer=ISSUER
    )

    other = _issue(ring, sim)
    claims = verify_ear(ring, other, now=AT, issuer=ISSUER)
    cache.add(other, claims)
    assert cache.claims(ring, other, now=AT, issuer=ISSUER) == claims
    assert cache.claims(ring, other, now=AT, issuer="https://other") is None
    assert len(cache) == 2


def test_hits_do_not_share_mutable_claims(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    token = _issue(ring, sim)
    first = cache.add_signed(ring, token, issuer=ISSUER)
    assert first.runtime_data is not None
    first.runtime_data["tee-pubkey"] = {"kty": "EC", "crv": "P-256", "x": "evil", "y": "evil"}
    again = cache.claims(ring, token, now=AT, issuer=ISSUER)
    assert again is not None and again.runtime_data == RUNTIME


def test_another_token_text_misses(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    token = _issue(ring, sim)
    cache.add_signed(ring, token, issuer=ISSUER)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600  # a longer life, under the genuine signature
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = ".".join([header, encoded, signature])
    assert cache.claims(ring, forged, now=AT, issuer=ISSUER) is None
    assert cache.claims(ring, token + "A", now=AT, issuer=ISSUER) is None
    with pytest.raises(Unauthenticated):
        verify_ear(ring, forged, now=AT, issuer=ISSUER)


def test_expiry_is_checked_at_every_use(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    token = _issue(ring, sim)
    exp = cache.add_signed(ring, token, issuer=ISSUER).expires_at
    last = dt.datetime.fromtimestamp(exp - 1, dt.UTC)
    assert cache.claims(ring, token, now=last, issuer=ISSUER) is not None
    assert cache.claims(ring, token, now=last + dt.timedelta(seconds=1), issuer=ISSUER) is None
    assert len(cache) == 0  # dropped once expired
    assert cache.claims(ring, token, now=last, issuer=ISSUER) is None


def test_kid_must_still_verify(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    token = _issue(ring, sim)
    cache.add_signed(ring, token, issuer=ISSUER)
    rotated = ring.rotate()
    hit = cache.claims(rotated, token, now=AT, issuer=ISSUER)  # the retired key's tokens still verify
    assert hit is not None and hit.kid == ring.kid
    dropped = rotated.rotate(keep=1)
    assert ring.kid not in dropped.kids
    assert cache.claims(dropped, token, now=AT, issuer=ISSUER) is None
    assert cache.claims(Keyring.generate(), token, now=AT, issuer=ISSUER) is None
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_ear(dropped, token, now=AT, issuer=ISSUER)


def test_add_signed_takes_only_the_current_keys_tokens(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache()
    with pytest.raises(ValueError, match="current key"):
        cache.add_signed(ring, _issue(Keyring.generate(), sim), issuer=ISSUER)
    with pytest.raises(ValueError, match="current key"):
        cache.add_signed(ring.rotate(), _issue(ring, sim), issuer=ISSUER)
    with pytest.raises(ValueError, match="another issuer"):
        cache.add_signed(ring, _issue(ring, sim, issuer="https://other"), issuer=ISSUER)
    assert len(cache) == 0


def test_bounded_least_recently_used_out(sim: SimEvidence) -> None:
    ring = Keyring.generate()
    cache = VerifiedEarCache(maxsize=2)
    a, b, c = (_issue(ring, sim) for _ in range(3))
    cache.add_signed(ring, a, issuer=ISSUER)
    cache.add_signed(ring, b, issuer=ISSUER)
    assert cache.claims(ring, a, now=AT, issuer=ISSUER) is not None  # a is now the most recent
    cache.add_signed(ring, c, issuer=ISSUER)
    assert len(cache) == 2
    assert cache.claims(ring, b, now=AT, issuer=ISSUER) is None
    assert cache.claims(ring, a, now=AT, issuer=ISSUER) is not None
    assert cache.claims(ring, c, now=AT, issuer=ISSUER) is not None
    with pytest.raises(ValueError):
        VerifiedEarCache(maxsize=0)


def test_keyring_caches_are_per_keyring() -> None:
    ring = Keyring.generate()
    keys = ring.verification_keys()
    keys.clear()  # a copy: the keyring's own map is untouched
    assert set(ring.verification_keys()) == ring.kids == {ring.kid}
    rotated = ring.rotate()
    assert rotated.kids == {rotated.kid, ring.kid}
    assert ring.kids == {ring.kid}
