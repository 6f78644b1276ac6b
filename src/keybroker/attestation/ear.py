"""Attestation results as EAR JWTs (EAT Attestation Results, draft-ietf-rats-ear) and their keys.

Token shape (JSON claims of a JWS, RFC 7515/7519)::

    {
      "eat_profile": "tag:github.com,2023:veraison/ear",
      "iat", "exp", "iss", "jti", "eat_nonce"?,
      "ear.verifier-id": {"developer": "keybroker", "build": "<version>"},
      "submods": {"cpu0": {
          "ear.status": "affirming" | "warning" | "contraindicated",
          "ear.trustworthiness-vector": {AR4SI claims, draft-ietf-rats-ar4si},
          "ear.appraisal-policy-id": "...",
          "ear.veraison.annotated-evidence": {"tee", "claims", "tcb", "sim", "report_data",
                                              "runtime_data_claims"?},
          "ear.veraison.policy-claims": {"reasons": [...], "notes": [...]}}},
      # flat claims in Intel Trust Authority's names, for /kbs/v1 passport mode (the TEE's own
      # from its verifier, VerifiedEvidence.ear_claims()):
      "attester_type", "attester_tcb_status", "attester_advisory_ids", "attester_held_data"?,
      "verifier_nonce"?, "sgx_*" | "tdx_*", "keybroker_sim"
    }

``runtime_data_claims`` sits where Confidential Containers Trustee puts it
(``/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey``).

Keys: a :class:`Keyring` holds the current signing key (ES384 by default) and the public halves of
previous ones, so that tokens signed before a rotation still verify. ``kid`` is the RFC 7638
thumbprint. Pure: persisting the keyring (sealed) is the caller's job (:meth:`Keyring.to_dict`).

Verification (:func:`verify_ear`) trusts only the keyring: the algorithm must be ES256 or ES384
and fit the key's curve; ``none``, HMAC and keys or URLs in the header are never used.
:class:`VerifiedEarCache` spares the signature check for the exact tokens that passed it (or
that we signed), the keyring and expiry checks still made at every use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Final, Literal, cast

from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey

from keybroker import __version__
from keybroker.appraisal.decision import Decision, EarStatus
from keybroker.appraisal.input import AppraisalInput, appraisal_input
from keybroker.appraisal.registry import REGISTRY
from keybroker.errors import InvalidInput, Unauthenticated
from keybroker.tee.verifier import VerifiedEvidence

__all__ = [
    "EAT_PROFILE",
    "EarClaims",
    "Keyring",
    "VerifiedEarCache",
    "issue_ear",
    "jwks_keys",
    "unverified_kid",
    "verify_ear",
]

EAT_PROFILE: Final = "tag:github.com,2023:veraison/ear"
SUBMOD: Final = "cpu0"
Alg = Literal["ES256", "ES384"]
_CURVE: Final[dict[str, str]] = {"ES256": "P-256", "ES384": "P-384"}
_ALG_OF_CURVE: Final[dict[str, Alg]] = {"P-256": "ES256", "P-384": "ES384"}
_STATUSES: Final = ("affirming", "warning", "contraindicated")
#: Tolerated clock difference for ``iat`` in the future (a token from a remote attestation service).
CLOCK_SKEW: Final = timedelta(seconds=60)
MAX_TOKEN_CHARS: Final = 64 * 1024


def _public(key: ECKey) -> ECKey:
    return ECKey.import_key(key.as_dict(private=False))


def _alg_of(key: ECKey) -> Alg:
    try:
        return _ALG_OF_CURVE[key.curve_name]
    except KeyError:
        raise InvalidInput(f"EC curve {key.curve_name} is not P-256 or P-384", field="jwk") from None


@dataclass(frozen=True)
class Keyring:
    """The signing key and the public keys that still verify. Immutable: :meth:`rotate` returns a new one."""

    current: ECKey
    previous: tuple[ECKey, ...] = ()

    def __post_init__(self) -> None:
        if not self.current.is_private:
            raise InvalidInput("the current EAR signing key must be a private key", field="jwk")
        _alg_of(self.current)
        for key in self.previous:
            _alg_of(key)

    @classmethod
    def generate(cls, alg: Alg = "ES384") -> Keyring:
        return cls(ECKey.generate_key(_CURVE[alg], private=True))

    @property
    def alg(self) -> Alg:
        return _alg_of(self.current)

    @cached_property
    def kid(self) -> str:
        return self.current.thumbprint()

    def rotate(self, alg: Alg | None = None, *, keep: int = 4) -> Keyring:
        """A new signing key; the current one's public key joins ``previous`` (the newest ``keep``)."""
        if keep < 1:
            raise InvalidInput("keep must be at least 1", field="keep")
        new = ECKey.generate_key(_CURVE[alg or self.alg], private=True)
        return Keyring(new, (_public(self.current), *self.previous)[:keep])

    def verification_keys(self) -> dict[str, ECKey]:
        """kid -> public key, for every key that verifies."""
        return dict(self._verification_keys)

    @cached_property
    def _verification_keys(self) -> dict[str, ECKey]:
        # computed once per (immutable) keyring: thumbprints and public-key imports cost ~0.1 ms a key
        keys = {k.thumbprint(): _public(k) for k in reversed(self.previous)}
        keys[self.kid] = _public(self.current)
        return keys

    @cached_property
    def kids(self) -> frozenset[str]:
        """The kids of every key that verifies."""
        return frozenset(self._verification_keys)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """``/.well-known/jwks.json``: public keys only, current first."""
        out = []
        for kid, key in sorted(self.verification_keys().items(), key=lambda kv: kv[0] != self.kid):
            jwk = dict(key.as_dict(private=False))
            jwk.update({"kid": kid, "alg": _alg_of(key), "use": "sig"})
            out.append(jwk)
        return {"keys": out}

    def to_dict(self) -> dict[str, Any]:
        """Serialized form **with the private key**: seal it before storing."""
        return {
            "current": dict(self.current.as_dict(private=True)),
            "previous": [dict(k.as_dict(private=False)) for k in self.previous],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keyring:
        try:
            current = ECKey.import_key(dict(data["current"]))
            previous = tuple(_public(ECKey.import_key(dict(k))) for k in data.get("previous", []))
        except (KeyError, TypeError, ValueError, JoseError) as exc:
            raise InvalidInput(f"malformed EAR keyring ({exc})", field="keyring") from None
        return cls(current, previous)


def unverified_kid(token: str) -> str | None:
    """The ``kid`` in an **unverified** token's header (None if there is none or it does not
    parse): only to choose which trusted keys to verify it with."""
    try:
        header = json.loads(_b64url_strict(token.split(".", 1)[0]))
    except (ValueError, RecursionError, Unauthenticated):  # RecursionError: 40,000 nested arrays
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def jwks_keys(jwks: Mapping[str, Any]) -> dict[str, ECKey]:
    """kid -> key of a remote attestation service's JWKS (see :func:`_keys_from_jwks`); at least one."""
    keys = _keys_from_jwks(jwks)
    if not keys:
        raise InvalidInput("the JWKS holds no EC P-256 or P-384 public key", field="jwks")
    return keys


def _keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, ECKey]:
    """kid -> key from a JWKS (a remote attestation service's); only public EC P-256/P-384 parts."""
    keys: dict[str, ECKey] = {}
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise InvalidInput("JWKS has no keys list", field="jwks")
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("kty") != "EC":
            continue
        try:
            key = ECKey.import_key({p: entry[p] for p in ("kty", "crv", "x", "y")})
        except (KeyError, TypeError, ValueError, JoseError):
            continue
        if key.curve_name not in _ALG_OF_CURVE:
            continue
        keys[key.thumbprint()] = key
        stated = entry.get("kid")
        if isinstance(stated, str) and stated:
            keys[stated] = key
    return keys


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _flat_claims(verified: VerifiedEvidence) -> dict[str, Any]:
    """Intel Trust Authority's token claim names (intel/trustauthority-kbs reads these): the TEE's
    own from its verifier (``attester_type``, ``sgx_*``/``tdx_*``), the TCB and sim flag here."""
    return {
        **verified.ear_claims(),
        "attester_tcb_status": verified.status,
        "attester_advisory_ids": list(verified.advisory_ids),
        "keybroker_sim": verified.sim,
    }


def issue_ear(
    keyring: Keyring,
    verified: VerifiedEvidence,
    decision: Decision,
    *,
    nonce: str | None,
    user_data: bytes | None,
    runtime_data: Mapping[str, Any] | None,
    issuer: str,
    ttl: timedelta,
    now: datetime,
) -> str:
    """Sign an EAR for ``verified`` as appraised by ``decision`` (status, vector, policy id)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if ttl <= timedelta(0):
        raise InvalidInput("ttl must be positive", field="ttl")
    iat = int(now.timestamp())
    claims: dict[str, Any] = {
        "eat_profile": EAT_PROFILE,
        "iat": iat,
        "exp": iat + max(1, int(ttl.total_seconds())),
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "ear.verifier-id": {"developer": "keybroker", "build": __version__},
        "submods": {
            SUBMOD: {
                "ear.status": decision.ear_status,
                "ear.trustworthiness-vector": decision.trust_vector.to_dict(),
                "ear.appraisal-policy-id": decision.policy_id,
                "ear.veraison.annotated-evidence": verified.annotated_evidence(runtime_data),
                "ear.veraison.policy-claims": {
                    "reasons": list(decision.public_reasons),  # the attester may be anyone
                    "notes": list(decision.notes),
                },
            }
        },
        **_flat_claims(verified),
    }
    if nonce is not None:
        claims["eat_nonce"] = nonce
        claims["verifier_nonce"] = {"val": nonce}
    if user_data is not None:
        claims["attester_held_data"] = _b64(user_data)
    header = {"alg": keyring.alg, "typ": "JWT", "kid": keyring.kid}
    return jwt.encode(header, claims, keyring.current, algorithms=[keyring.alg])


@dataclass(frozen=True)
class EarClaims:
    """A verified EAR, typed. ``raw`` is the whole claims set."""

    issuer: str
    issued_at: int
    expires_at: int
    token_id: str | None
    kid: str
    nonce: str | None
    status: EarStatus
    trust_vector: dict[str, int]
    policy_id: str | None
    tee: str
    #: As the token carries it, its ``tcb`` cut to the members the TEE's results have.
    annotated_evidence: dict[str, Any]
    held_data: bytes | None
    runtime_data: dict[str, Any] | None
    sim: bool
    raw: dict[str, Any] = field(repr=False)

    def appraisal_input(self, *, client_permissions: list[str] | None) -> AppraisalInput:
        """The appraisal input document the token's evidence had (passport mode): built by the one
        builder from the annotated evidence, as for evidence verified here."""
        return appraisal_input(self.annotated_evidence, client_permissions=client_permissions)


def _b64url_strict(segment: str) -> bytes:
    """Decode one compact-serialization segment; non-canonical encodings (padding, stray bits) fail."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise Unauthenticated("the attestation token is malformed (bad base64url)") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise Unauthenticated("the attestation token is malformed (non-canonical base64url)")
    return raw


def _malformed(what: str) -> Unauthenticated:
    return Unauthenticated(f"the attestation token is malformed ({what})")


def _claims_of(raw: dict[str, Any], kid: str) -> EarClaims:
    if raw.get("eat_profile") != EAT_PROFILE:
        raise _malformed(f"eat_profile is not {EAT_PROFILE}")
    submods = raw.get("submods")
    sub = submods.get(SUBMOD) if isinstance(submods, dict) else None
    if not isinstance(sub, dict):
        raise _malformed(f"no submods.{SUBMOD}")
    status = sub.get("ear.status")
    if status not in _STATUSES:
        raise _malformed("ear.status is not affirming, warning or contraindicated")
    vector = sub.get("ear.trustworthiness-vector", {})
    if not isinstance(vector, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in vector.values()
    ):
        raise _malformed("ear.trustworthiness-vector")
    evidence = sub.get("ear.veraison.annotated-evidence")
    if not isinstance(evidence, dict):
        raise _malformed("no ear.veraison.annotated-evidence")
    tee = evidence.get("tee")
    tcb = evidence.get("tcb")
    claims = evidence.get("claims")
    registered = REGISTRY.get(tee)
    if registered is None or not isinstance(claims, dict) or claims.get("tee") != tee:
        raise _malformed(f"annotated evidence has no {'/'.join(REGISTRY.attestation_types)} claims")
    members = ("status", "advisory_ids", *registered.tcb_members)
    if not isinstance(tcb, dict) or not all(k in tcb for k in members):
        raise _malformed("annotated evidence has no TCB status")
    if not isinstance(tcb["advisory_ids"], list):
        raise _malformed("advisory_ids")
    sim = evidence.get("sim")
    if not isinstance(sim, bool):
        raise _malformed("annotated evidence does not say whether it is simulated")
    held = raw.get("attester_held_data")
    held_data: bytes | None = None
    if held is not None:
        try:
            held_data = base64.b64decode(held, validate=True) if isinstance(held, str) else None
        except (binascii.Error, ValueError):
            held_data = None
        if held_data is None:
            raise _malformed("attester_held_data is not base64")
    runtime_data = evidence.get("runtime_data_claims")
    if runtime_data is not None and not isinstance(runtime_data, dict):
        raise _malformed("runtime_data_claims")
    nonce = raw.get("eat_nonce")
    policy_id = sub.get("ear.appraisal-policy-id")
    jti = raw.get("jti")
    return EarClaims(
        issuer=str(raw["iss"]),
        issued_at=int(raw["iat"]),
        expires_at=int(raw["exp"]),
        token_id=jti if isinstance(jti, str) else None,
        kid=kid,
        nonce=nonce if isinstance(nonce, str) else None,
        status=cast(EarStatus, status),
        trust_vector=dict(vector),
        policy_id=policy_id if isinstance(policy_id, str) else None,
        tee=registered.name,
        annotated_evidence={**evidence, "tcb": {k: tcb[k] for k in members}},
        held_data=held_data,
        runtime_data=runtime_data,
        sim=sim,
        raw=raw,
    )


def verify_ear(keys: Keyring | Mapping[str, Any], token: str, *, now: datetime, issuer: str) -> EarClaims:
    """Verify an EAR against a :class:`Keyring` or a JWKS and return its claims.

    Checks, in order: compact form with canonical base64url; header ``alg`` ES256/ES384, no
    ``crit``; ``kid`` in the trusted keys and the key's curve fits ``alg``; signature; ``iss``;
    ``iat`` not in the future (:data:`CLOCK_SKEW`) and ``now`` before ``exp``; the EAR shape.
    Raises :class:`Unauthenticated` saying which check failed.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise _malformed("not a string of at most 64 KiB")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _malformed("not a compact JWS with three parts")
    for part in parts:
        _b64url_strict(part)
    try:
        header = json.loads(_b64url_strict(parts[0]))
    except (ValueError, RecursionError):
        raise _malformed("header is not JSON") from None
    if not isinstance(header, dict):
        raise _malformed("header is not a JSON object")
    alg = header.get("alg")
    if alg not in _CURVE:
        raise Unauthenticated(f"the attestation token's alg {alg!r} is not ES256 or ES384")
    if "crit" in header:
        raise Unauthenticated("the attestation token has critical header parameters keybroker does not know")
    kid = header.get("kid")
    trusted = keys._verification_keys if isinstance(keys, Keyring) else _keys_from_jwks(keys)
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise Unauthenticated(f"the attestation token was signed by an unknown key (kid {kid!r})")
    if key.curve_name != _CURVE[alg]:
        raise Unauthenticated(
            f"the attestation token's alg {alg} does not fit its key's curve {key.curve_name}"
        )
    try:
        decoded = jwt.decode(token, key, algorithms=[alg])
    except BadSignatureError:
        raise Unauthenticated("the attestation token's signature does not verify") from None
    except (JoseError, ValueError):
        raise _malformed("undecodable") from None
    raw = decoded.claims
    if raw.get("iss") != issuer:
        raise Unauthenticated(f"the attestation token was issued by {raw.get('iss')!r}, expected {issuer!r}")
    iat, exp = raw.get("iat"), raw.get("exp")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        raise _malformed("iat/exp are not integers")
    at = now.timestamp()
    if at >= cast(int, exp):
        raise Unauthenticated("the attestation token has expired")
    if at + CLOCK_SKEW.total_seconds() < cast(int, iat):
        raise Unauthenticated("the attestation token is not valid yet (iat is in the future)")
    return _claims_of(raw, kid)


class VerifiedEarCache:
    """EARs that passed :func:`verify_ear` against a :class:`Keyring`, or that the keyring's signing
    key just signed, by the SHA-256 of their exact text: a hit skips the signature check (~1 ms).

    Why a hit is as good as a verification: every check of :func:`verify_ear` is a function of the
    token's bytes, the keyring and the time. The token-only checks (form, base64url, ``alg``,
    ``crit``, signature over header and payload, ``iss``, the EAR shape) gave the same answer for
    these very bytes when the entry was made, and SHA-256 ties an entry to those bytes (a token
    that differs in one character has another digest and is verified in full). The keyring check is
    redone at every use: the ``kid`` must still be among the keys that verify (a key dropped from
    the keyring stops its tokens here as it does in :func:`verify_ear`; a rotation keeps retired
    kids on purpose, so that their tokens still verify). The time checks are redone too: ``now``
    before ``exp`` at every use; "``iat`` not in the future" only gets truer as time passes.
    Nothing that failed is kept; entries are only added after the full verification succeeded (or
    when we signed the token ourselves, with the claims read back from the bytes we signed). The
    claims are parsed again from the token at every hit, so callers never share mutable claims.
    Per process, in memory, bounded (least recently used out); entries hold a digest, a kid and an
    expiry, never a token.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._entries: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def claims(self, keys: Keyring, token: str, *, now: datetime, issuer: str) -> EarClaims | None:
        """The claims of ``token`` if it is known verified, its kid still verifies and it has not
        expired at ``now``; None otherwise (then verify it in full)."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            kid, exp = entry
            if kid not in keys.kids or now.timestamp() >= exp:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
        claims = _claims_of(json.loads(_b64url_strict(token.split(".")[1])), kid)
        if claims.issuer != issuer:  # an entry made for another issuer: not ours to answer
            return None
        return claims

    def add(self, token: str, claims: EarClaims) -> None:
        """Remember ``token``, which :func:`verify_ear` just returned ``claims`` for."""
        self._put(token, claims.kid, claims.expires_at)

    def add_signed(self, keys: Keyring, token: str, *, issuer: str) -> EarClaims:
        """Remember ``token``, which :func:`issue_ear` just signed with ``keys``; its claims as
        :func:`verify_ear` would return them (read back from the signed bytes)."""
        parts = token.split(".")
        header = json.loads(_b64url_strict(parts[0]))
        if len(parts) != 3 or header.get("kid") != keys.kid or header.get("alg") != keys.alg:
            raise ValueError("the token was not signed by this keyring's current key")
        claims = _claims_of(json.loads(_b64url_strict(parts[1])), keys.kid)
        if claims.issuer != issuer:
            raise ValueError("the token was issued for another issuer")
        self._put(token, claims.kid, claims.expires_at)
        return claims

    def _put(self, token: str, kid: str, exp: int) -> None:
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            self._entries[digest] = (kid, exp)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
