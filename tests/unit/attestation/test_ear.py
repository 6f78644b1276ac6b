"""EAR attestation-result tokens: shape, round trip, expiry, rotation, tampering, algorithm confusion."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.helpers.sim_evidence import AT, REPORT_DATA, SimEvidence

from keybroker import __version__
from keybroker.appraisal import secl
from keybroker.appraisal.decision import Decision
from keybroker.appraisal.defaults import default_attestation_policy
from keybroker.appraisal.input import appraisal_input
from keybroker.appraisal.policy import TransferPolicyBody
from keybroker.attestation.ear import EAT_PROFILE, Keyring, issue_ear, verify_ear
from keybroker.errors import InvalidInput, Unauthenticated
from keybroker.tee.dcap.verify import VerifiedQuote
from keybroker.tee.sim import DEFAULT_MRENCLAVE, DEFAULT_MRSIGNER, DEFAULT_MRTD, DEFAULT_RTMRS
from keybroker.tee.verifier import VerifiedEvidence

ISSUER = "https://keybroker.test"
TTL = dt.timedelta(minutes=5)
NONCE = base64.b64encode(b"n" * 32).decode()
USER_DATA = b"\x30\x59 workload public key"
RUNTIME = {"nonce": NONCE, "tee-pubkey": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"}}


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


def _decision(v: VerifiedEvidence) -> Decision:
    return default_attestation_policy(appraisal_input(v, client_permissions=None))


def _issue(keyring: Keyring, v: VerifiedEvidence, **kw: Any) -> str:
    args: dict[str, Any] = {
        "nonce": NONCE,
        "user_data": USER_DATA,
        "runtime_data": RUNTIME,
        "issuer": ISSUER,
        "ttl": TTL,
        "now": AT,
    }
    args.update(kw)
    return issue_ear(keyring, v, _decision(v), **args)


def _parts(token: str) -> list[Any]:
    def dec(s: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    h, p, _ = token.split(".")
    return [dec(h), dec(p)]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_sgx_token_shape(sim: SimEvidence, keyring: Keyring) -> None:
    v = sim.verify("sgx", isvsvn=3, isvprodid=7)
    token = _issue(keyring, v)
    header, claims = _parts(token)
    assert header == {"alg": "ES384", "typ": "JWT", "kid": keyring.kid}
    assert keyring.kid == keyring.current.thumbprint()
    iat = int(AT.timestamp())
    assert claims["eat_profile"] == EAT_PROFILE == "tag:github.com,2023:veraison/ear"
    assert (claims["iat"], claims["exp"], claims["iss"]) == (iat, iat + 300, ISSUER)
    assert len(claims["jti"]) == 36
    assert claims["eat_nonce"] == NONCE and claims["verifier_nonce"] == {"val": NONCE}
    assert claims["ear.verifier-id"] == {"developer": "keybroker", "build": __version__}
    cpu0 = claims["submods"]["cpu0"]
    assert cpu0["ear.status"] == "warning"  # simulated
    assert cpu0["ear.trustworthiness-vector"] == _decision(v).trust_vector.to_dict()
    assert cpu0["ear.appraisal-policy-id"] == "keybroker:default-attestation-policy"
    evidence = cpu0["ear.veraison.annotated-evidence"]
    assert evidence["tee"] == "sgx" and evidence["sim"] is True
    quote = v.detail
    assert isinstance(quote, VerifiedQuote)
    assert evidence["claims"] == quote.claims.to_dict() == v.claims
    assert evidence["tcb"] == {
        "status": "UpToDate",
        "advisory_ids": [],
        "collateral_expiry": quote.collateral_expiry.isoformat(),
        "tcb_date": quote.tcb_date.isoformat(),
    }
    assert evidence["report_data"] == REPORT_DATA.hex()
    assert evidence["runtime_data_claims"] == RUNTIME
    assert cpu0["ear.veraison.policy-claims"] == {"reasons": [], "notes": list(_decision(v).notes)}
    assert claims["attester_type"] == "SGX"
    assert claims["attester_tcb_status"] == "UpToDate"
    assert claims["attester_advisory_ids"] == []
    assert base64.b64decode(claims["attester_held_data"]) == USER_DATA
    assert claims["sgx_mrenclave"] == DEFAULT_MRENCLAVE.hex()
    assert claims["sgx_mrsigner"] == DEFAULT_MRSIGNER.hex()
    assert (claims["sgx_isvprodid"], claims["sgx_isvsvn"], claims["sgx_is_debuggable"]) == (7, 3, False)
    assert claims["keybroker_sim"] is True
    assert not any(k.startswith("tdx_") for k in claims)


def test_tdx_token_flat_claims(sim: SimEvidence, keyring: Keyring) -> None:
    v = sim.verify("tdx", tcb="swhardening", debug=True)
    _, claims = _parts(_issue(keyring, v, nonce=None, user_data=None, runtime_data=None))
    assert claims["attester_type"] == "TDX"
    assert claims["attester_tcb_status"] == "SWHardeningNeeded"
    assert claims["attester_advisory_ids"] == ["DEV-SA-00101"]
    assert claims["tdx_mrtd"] == DEFAULT_MRTD.hex()
    assert [claims[f"tdx_rtmr{i}"] for i in range(4)] == [r.hex() for r in DEFAULT_RTMRS]
    assert claims["tdx_is_debuggable"] is True
    assert {"tdx_mrseam", "tdx_mrsignerseam", "tdx_seamsvn"} <= set(claims)
    assert claims["submods"]["cpu0"]["ear.status"] == "contraindicated"  # debug
    for absent in ("eat_nonce", "verifier_nonce", "attester_held_data"):
        assert absent not in claims
    assert "runtime_data_claims" not in claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_round_trip(sim: SimEvidence, keyring: Keyring, tee: str) -> None:
    v = sim.verify(tee)  # type: ignore[arg-type]
    ear = verify_ear(keyring, _issue(keyring, v), now=AT, issuer=ISSUER)
    assert ear.issuer == ISSUER and ear.kid == keyring.kid
    assert ear.tee == tee and ear.sim is True
    assert ear.status == "warning"
    assert ear.nonce == NONCE
    assert ear.held_data == USER_DATA
    assert ear.runtime_data == RUNTIME
    assert ear.policy_id == "keybroker:default-attestation-policy"
    assert ear.expires_at - ear.issued_at == 300
    assert ear.trust_vector["hardware"] == 32


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_passport_mode_sees_the_same_input_document(sim: SimEvidence, keyring: Keyring, tee: str) -> None:
    v = sim.verify(tee, tcb="outofdate")  # type: ignore[arg-type]
    ear = verify_ear(keyring, _issue(keyring, v), now=AT, issuer=ISSUER)
    assert ear.appraisal_input(client_permissions=["b", "a"]) == appraisal_input(
        v, client_permissions=["a", "b"]
    )
    policy = TransferPolicyBody.model_validate(
        {
            "attestation_type": [tee.upper()],
            tee: {
                "attributes": {
                    "mrsigner": [v.claims["mr_signer"]],
                    "isvprodid": [0],
                    "enforce_tcb_upto_date": True,
                }
                if tee == "sgx"
                else {"mrsignerseam": [v.claims["mr_signer_seam"]], "mrseam": [v.claims["mr_seam"]]}
            },
            "allow_simulated": True,
        }
    )
    from_token = secl.evaluate_input(policy, ear.appraisal_input(client_permissions=None), policy_id="p")
    from_quote = secl.evaluate(policy, v, client_permissions=None, policy_id="p")
    assert from_token == from_quote


def test_expiry(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"))
    exp = AT + TTL
    assert verify_ear(keyring, token, now=exp - dt.timedelta(seconds=1), issuer=ISSUER)
    for late in (exp, exp + dt.timedelta(days=1)):
        with pytest.raises(Unauthenticated, match="^the attestation token has expired$"):
            verify_ear(keyring, token, now=late, issuer=ISSUER)


def test_not_yet_valid(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"))
    assert verify_ear(keyring, token, now=AT - dt.timedelta(seconds=60), issuer=ISSUER)
    with pytest.raises(Unauthenticated, match="not valid yet"):
        verify_ear(keyring, token, now=AT - dt.timedelta(seconds=61), issuer=ISSUER)


def test_wrong_issuer(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"))
    with pytest.raises(Unauthenticated) as info:
        verify_ear(keyring, token, now=AT, issuer="https://other")
    assert (
        str(info.value)
        == "the attestation token was issued by 'https://keybroker.test', expected 'https://other'"
    )


def test_rotation_keeps_old_public_keys(sim: SimEvidence) -> None:
    old = Keyring.generate()
    token = _issue(old, sim.verify("sgx"))
    new = old.rotate()
    assert new.kid != old.kid
    assert new.previous[0].thumbprint() == old.kid and not new.previous[0].is_private
    assert verify_ear(new, token, now=AT, issuer=ISSUER).kid == old.kid
    assert verify_ear(new, _issue(new, sim.verify("sgx")), now=AT, issuer=ISSUER).kid == new.kid
    assert [k["kid"] for k in new.jwks()["keys"]] == [new.kid, old.kid]

    dropped = new.rotate(keep=1).rotate(keep=1)
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_ear(dropped, token, now=AT, issuer=ISSUER)


def test_foreign_key_is_unknown(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(Keyring.generate(), sim.verify("sgx"))
    with pytest.raises(Unauthenticated) as info:
        verify_ear(keyring, token, now=AT, issuer=ISSUER)
    assert str(info.value).startswith("the attestation token was signed by an unknown key (kid ")


def test_jwks_is_public_and_verifies(sim: SimEvidence, keyring: Keyring) -> None:
    jwks = keyring.jwks()
    (entry,) = jwks["keys"]
    assert "d" not in entry
    assert entry == {
        **keyring.current.as_dict(private=False),
        "kid": keyring.kid,
        "alg": "ES384",
        "use": "sig",
    }
    token = _issue(keyring, sim.verify("tdx"))
    assert verify_ear(json.loads(json.dumps(jwks)), token, now=AT, issuer=ISSUER).tee == "tdx"
    stripped = {"keys": [{k: entry[k] for k in ("kty", "crv", "x", "y")}]}  # no kid: thumbprint
    assert verify_ear(stripped, token, now=AT, issuer=ISSUER)


def test_keyring_serialization(sim: SimEvidence) -> None:
    ring = Keyring.generate().rotate()
    data = json.loads(json.dumps(ring.to_dict()))
    assert "d" in data["current"] and all("d" not in k for k in data["previous"])
    again = Keyring.from_dict(data)
    assert again.kid == ring.kid
    assert [k.thumbprint() for k in again.previous] == [k.thumbprint() for k in ring.previous]
    assert verify_ear(ring, _issue(again, sim.verify("sgx")), now=AT, issuer=ISSUER)
    with pytest.raises(InvalidInput, match="private"):
        Keyring.from_dict({"current": data["previous"][0]})
    with pytest.raises(InvalidInput, match="malformed"):
        Keyring.from_dict({"current": {"kty": "EC"}})


def test_es256_keyring(sim: SimEvidence) -> None:
    ring = Keyring.generate("ES256")
    token = _issue(ring, sim.verify("sgx"))
    assert _parts(token)[0]["alg"] == "ES256"
    assert verify_ear(ring, token, now=AT, issuer=ISSUER)
    assert ring.rotate().alg == "ES256" and ring.rotate("ES384").alg == "ES384"


def test_alg_must_fit_the_key_curve(keyring: Keyring) -> None:
    other = ECKey.generate_key("P-256", private=True)
    header = {"alg": "ES256", "kid": keyring.kid}
    token = jwt.encode(header, {"iss": ISSUER}, other, algorithms=["ES256"])
    with pytest.raises(Unauthenticated, match="does not fit its key's curve P-384"):
        verify_ear(keyring, token, now=AT, issuer=ISSUER)


def test_tampering_sweep(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"), runtime_data=None)
    assert verify_ear(keyring, token, now=AT, issuer=ISSUER)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted = []
    for i, ch in enumerate(token):
        if ch == ".":
            continue
        swapped = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
        try:
            verify_ear(keyring, token[:i] + swapped + token[i + 1 :], now=AT, issuer=ISSUER)
        except Unauthenticated:
            continue
        accepted.append(i)
    assert accepted == []


def test_tampered_payload_with_valid_encoding_fails(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"))
    h, p, s = token.split(".")
    claims = _parts(token)[1]
    claims["submods"]["cpu0"]["ear.status"] = "affirming"
    forged = ".".join([h, _b64url(json.dumps(claims).encode()), s])
    with pytest.raises(Unauthenticated, match="^the attestation token's signature does not verify$"):
        verify_ear(keyring, forged, now=AT, issuer=ISSUER)


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


@pytest.mark.parametrize("secret_kind", ["pem", "der", "jwk-json"])
def test_hs256_with_public_key_bytes_fails(sim: SimEvidence, keyring: Keyring, secret_kind: str) -> None:
    claims = _parts(_issue(keyring, sim.verify("sgx")))[1]
    public = keyring.current.public_key
    secret = {
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(keyring.jwks()["keys"][0]).encode(),
    }[secret_kind]
    token = _hs256({"alg": "HS256", "typ": "JWT", "kid": keyring.kid}, claims, secret)
    with pytest.raises(Unauthenticated) as info:
        verify_ear(keyring, token, now=AT, issuer=ISSUER)
    assert str(info.value) == "the attestation token's alg 'HS256' is not ES256 or ES384"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "RS256", "PS384", "EdDSA", ""])
def test_other_algs_fail(sim: SimEvidence, keyring: Keyring, alg: str) -> None:
    claims = _parts(_issue(keyring, sim.verify("sgx")))[1]
    header = {"alg": alg, "typ": "JWT", "kid": keyring.kid}
    for signature in ("", _b64url(b"x" * 96)):
        token = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}.{signature}"
        with pytest.raises(Unauthenticated):
            verify_ear(keyring, token, now=AT, issuer=ISSUER)


def test_key_in_header_is_never_used(sim: SimEvidence, keyring: Keyring) -> None:
    attacker = ECKey.generate_key("P-384", private=True)
    claims = _parts(_issue(keyring, sim.verify("sgx")))[1]
    header = {"alg": "ES384", "jwk": attacker.as_dict(private=False), "kid": attacker.thumbprint()}
    token = jwt.encode(header, claims, attacker, algorithms=["ES384"])
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_ear(keyring, token, now=AT, issuer=ISSUER)
    header["kid"] = keyring.kid  # claims our kid, signed by the attacker
    token = jwt.encode(header, claims, attacker, algorithms=["ES384"])
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verify_ear(keyring, token, now=AT, issuer=ISSUER)


def _es384(header: dict[str, Any], claims: dict[str, Any], key: ECKey) -> str:
    """Sign without joserfc's header checks (it refuses ``crit``)."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    der = key.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384()))  # type: ignore[union-attr]
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64url(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def test_crit_header_fails(sim: SimEvidence, keyring: Keyring) -> None:
    claims = _parts(_issue(keyring, sim.verify("sgx")))[1]
    plain = _es384({"alg": "ES384", "kid": keyring.kid}, claims, keyring.current)
    assert verify_ear(keyring, plain, now=AT, issuer=ISSUER)  # the helper signs correctly
    token = _es384(
        {"alg": "ES384", "kid": keyring.kid, "crit": ["x-ext"], "x-ext": 1}, claims, keyring.current
    )
    with pytest.raises(Unauthenticated, match="critical header"):
        verify_ear(keyring, token, now=AT, issuer=ISSUER)


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ISSUER, "iat": 0, "exp": 2**40},
        {"iss": ISSUER, "iat": 0, "exp": 2**40, "eat_profile": EAT_PROFILE, "submods": {}},
        {"iss": ISSUER, "iat": "0", "exp": 2**40},
        {"iss": ISSUER, "iat": True, "exp": 2**40},
    ],
)
def test_our_signature_on_a_non_ear_is_malformed(keyring: Keyring, claims: dict[str, Any]) -> None:
    token = jwt.encode({"alg": "ES384", "kid": keyring.kid}, claims, keyring.current, algorithms=["ES384"])
    with pytest.raises(Unauthenticated, match="malformed"):
        verify_ear(keyring, token, now=AT, issuer=ISSUER)


@pytest.mark.parametrize("mangle", ["two.parts", "a.b.c.d", "..", "", "x" * (64 * 1024 + 1)])
def test_not_a_jws(keyring: Keyring, mangle: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed"):
        verify_ear(keyring, mangle, now=AT, issuer=ISSUER)


def test_padding_is_not_canonical(sim: SimEvidence, keyring: Keyring) -> None:
    token = _issue(keyring, sim.verify("sgx"))
    h, p, s = token.split(".")
    with pytest.raises(Unauthenticated, match="base64url"):
        verify_ear(keyring, f"{h}==.{p}.{s}", now=AT, issuer=ISSUER)


def test_naive_times_are_rejected(sim: SimEvidence, keyring: Keyring) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _issue(keyring, sim.verify("sgx"), now=AT.replace(tzinfo=None))
    with pytest.raises(InvalidInput, match="ttl"):
        _issue(keyring, sim.verify("sgx"), ttl=dt.timedelta(0))
