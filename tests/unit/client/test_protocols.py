"""The /kbs/v1 and /kbs/v0 exchanges against mock brokers that check the binding the way the real one
does (keybroker.wire.binding) and wrap with the real wrap (keybroker.keys.wrap)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.client.errors import Denied, Inconsistent, Unreachable
from keybroker.client.evidence import Evidence, TeeName, usable_auxblob
from keybroker.client.http import RetryPolicy, Transport
from keybroker.client.protocol_v0 import fetch_resource, snp_primary_evidence
from keybroker.client.protocol_v1 import Timings, fetch_key, request_challenge
from keybroker.errors import InvalidInput
from keybroker.keys import wrap
from keybroker.tee.snp.plugin import SnpVerifier
from keybroker.wire import binding
from keybroker.wire.certtable import GUID_ASK, GUID_VCEK, build_cert_table

KEY_ID = str(uuid.uuid4())


@dataclass
class FakeTee:
    tee: TeeName = "tdx"
    source: str = "fake TEE"
    asked: list[bytes] = field(default_factory=list)
    aux: bytes | None = None

    def evidence(self, report_data: bytes) -> Evidence:
        self.asked.append(report_data)
        return Evidence(self.tee, b"QUOTE" + report_data, self.source, aux=self.aux)


def _transport(handler: Any, sleeps: list[float]) -> Transport:
    return Transport(
        "https://kb.test",
        retry=RetryPolicy(attempts=3, base_delay=0.01),
        sleep=sleeps.append,
        http_transport=httpx.MockTransport(handler),
    )


@dataclass
class V1Broker:
    secret: bytes
    fail_transfers: int = 0
    deny: bool = False
    #: What the challenge says of the key: absent (an older broker), None (a secret) or a DER SPKI.
    public_key: bytes | None | str = "absent"
    nonces: list[bytes] = field(default_factory=list)
    spkis: list[bytes] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    #: What the evidence carries after the quote (an SEV-SNP certificate table).
    aux: bytes = b""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/kbs/v1/keys/{KEY_ID}/transfer"
        if not request.content:
            nonce = os.urandom(32)
            self.nonces.append(nonce)
            answer: dict[str, Any] = {"nonce": {"val": base64.b64encode(nonce).decode(), "iat": 0, "exp": 60}}
            if self.public_key != "absent":
                pk = self.public_key
                answer["public_key"] = base64.b64encode(pk).decode() if isinstance(pk, bytes) else None
            return httpx.Response(200, json=answer, headers={"Attestation-Type": "TDX"})
        body = json.loads(request.content)
        self.headers.append(request.headers["Attestation-Type"])
        nonce = base64.b64decode(body["nonce"]["val"])
        spki = base64.b64decode(body["user_data"])
        assert nonce == self.nonces[-1]
        assert base64.b64decode(body["quote"]) == b"QUOTE" + binding.v1_report_data(nonce, spki) + self.aux
        self.spkis.append(spki)
        if self.fail_transfers:
            self.fail_transfers -= 1
            return httpx.Response(503, json={"detail": "sealed"})
        if self.deny:
            return httpx.Response(
                403,
                json={
                    "detail": "the evidence does not satisfy the key's transfer policy",
                    "reasons": ["mrtd x"],
                },
            )
        pub = binding.load_spki(spki)
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 3072
        w = wrap.secl_wrap(self.secret, pub)
        return httpx.Response(
            200,
            json={
                "wrapped_key": base64.b64encode(w.wrapped_key).decode(),
                "wrapped_swk": base64.b64encode(w.wrapped_swk).decode(),
            },
        )


def test_v1_release_binds_nonce_and_ephemeral_key() -> None:
    broker = V1Broker(os.urandom(32))
    tee, sleeps, timings = FakeTee(), [], Timings()
    got = fetch_key(_transport(broker, sleeps), KEY_ID, tee, timings=timings)
    assert got.material == broker.secret and got.kind == "secret" and got.key_id == KEY_ID
    assert broker.headers == ["TDX"] and len(tee.asked) == 1 and sleeps == []
    assert set(timings.steps) == {"challenge", "keypair", "evidence", "transfer", "unwrap"}


def test_v1_5xx_after_the_nonce_starts_over_with_a_new_nonce_and_key() -> None:
    broker = V1Broker(os.urandom(32), fail_transfers=1)
    sleeps: list[float] = []
    got = fetch_key(_transport(broker, sleeps), KEY_ID, FakeTee(), sleep=sleeps.append)
    assert got.material == broker.secret
    assert len(broker.nonces) == 2 and broker.nonces[0] != broker.nonces[1]
    assert broker.spkis[0] != broker.spkis[1]  # a fresh ephemeral key per attempt
    assert len(sleeps) == 1


def test_v1_gives_up_after_the_retries() -> None:
    broker = V1Broker(os.urandom(32), fail_transfers=10)
    sleeps: list[float] = []
    with pytest.raises(Unreachable, match="503 sealed"):
        fetch_key(_transport(broker, sleeps), KEY_ID, FakeTee(), sleep=sleeps.append)
    assert len(broker.nonces) == 3


def test_v1_denial_is_not_retried() -> None:
    broker = V1Broker(b"k", deny=True)
    sleeps: list[float] = []
    with pytest.raises(Denied) as caught:
        fetch_key(_transport(broker, sleeps), KEY_ID, FakeTee(), sleep=sleeps.append)
    assert caught.value.reasons == ["mrtd x"] and len(broker.nonces) == 1 and sleeps == []


def test_v1_sends_snp_reports_with_their_certificate_table() -> None:
    table = build_cert_table([(GUID_VCEK, b"vcek der"), (GUID_ASK, b"ask der")])
    broker = V1Broker(b"k", aux=table)
    assert fetch_key(_transport(broker, []), KEY_ID, FakeTee(tee="snp", aux=table)).material == b"k"
    assert broker.headers == ["SNP"]
    # without a table, the report alone
    bare = V1Broker(b"k")
    assert fetch_key(_transport(bare, []), KEY_ID, FakeTee(tee="snp")).material == b"k"


def test_v0_snp_evidence_is_trustees_form() -> None:
    table = build_cert_table([(GUID_VCEK, b"vcek der"), (GUID_ASK, b"ask der")])
    primary = snp_primary_evidence(b"R" * 1184, table)
    assert primary == {
        "attestation_report": base64.b64encode(b"R" * 1184).decode(),
        "cert_chain": [
            {"cert_type": "VCEK", "data": base64.b64encode(b"vcek der").decode()},
            {"cert_type": "ASK", "data": base64.b64encode(b"ask der").decode()},
        ],
    }
    assert snp_primary_evidence(b"R" * 1184, None)["cert_chain"] is None
    # the broker's SNP plugin reads it back as report || the same table
    assert SnpVerifier().kbs_v0_evidence(primary) == b"R" * 1184 + table


def test_a_malformed_auxblob_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert usable_auxblob(b"\x01" * 30, "configfs-tsm (sev_guest)") is None
    assert "ignoring a malformed certificate table" in caplog.text
    good = build_cert_table([(GUID_VCEK, b"x")])
    assert usable_auxblob(good, "x") == good and usable_auxblob(b"", "x") is None


@dataclass
class V0Broker:
    secret: bytes
    select: str | None = "sha512"
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    offered: list[Any] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        cookie = request.headers.get("cookie", "").removeprefix("kbs-session-id=")
        if path == "/kbs/v0/auth":
            body = json.loads(request.content)
            assert body["version"] == "0.4.0" and body["tee"] == "tdx"
            self.offered.append(body["extra-params"]["supported-hash-algorithms"])
            sid = str(uuid.uuid4())
            nonce = base64.b64encode(os.urandom(32)).decode()
            self.sessions[sid] = {"nonce": nonce}
            extra: Any = {"selected-hash-algorithm": self.select} if self.select else ""
            return httpx.Response(
                200,
                json={"nonce": nonce, "extra-params": extra},
                headers={"Set-Cookie": f"kbs-session-id={sid}; Path=/kbs/v0; Secure; HttpOnly"},
            )
        session = self.sessions[cookie]
        if path == "/kbs/v0/attest":
            body = json.loads(request.content)
            runtime, evidence = body["runtime-data"], body["tee-evidence"]
            assert runtime["nonce"] == session["nonce"] and evidence["additional_evidence"] == ""
            expected = binding.v0_report_data(
                session["nonce"], runtime["tee-pubkey"], "", self.select or "sha384"
            )
            primary = evidence["primary_evidence"]
            assert base64.b64decode(primary["quote"]) == b"QUOTE" + expected and "cc_eventlog" in primary
            session["jwk"] = runtime["tee-pubkey"]
            return httpx.Response(200, json={"token": "ear"})
        assert path == "/kbs/v0/resource/repo/key/tls" and "jwk" in session
        return httpx.Response(200, json=wrap.jwe_wrap(self.secret, session["jwk"]))


@pytest.mark.parametrize(("key_type", "select"), [("rsa", "sha512"), ("ec", None), ("ec", "sha256")])
def test_v0_resource(key_type: str, select: str | None) -> None:
    broker = V0Broker(os.urandom(24), select=select)
    got = fetch_resource(
        _transport(broker, []), "repo/key/tls", FakeTee(), key_type="rsa" if key_type == "rsa" else "ec"
    )
    assert got.material == broker.secret
    assert broker.offered == [["sha384", "sha512", "sha256"]]


def test_v0_rejects_a_hash_it_did_not_offer_and_bad_paths() -> None:
    with pytest.raises(InvalidInput, match="not offered"):
        fetch_resource(_transport(V0Broker(b"x", select="md5"), []), "repo/key/tls", FakeTee())
    with pytest.raises(InvalidInput, match="REPOSITORY/TYPE/TAG"):
        fetch_resource(_transport(V0Broker(b"x"), []), "repo/tls", FakeTee())


def test_v1_private_key_release_is_pkcs8() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    got = fetch_key(_transport(V1Broker(pkcs8), []), KEY_ID, FakeTee())
    assert (
        got.kind == "rsa"
        and got.private_key().public_key().public_numbers() == key.public_key().public_numbers()
    )


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_v1_challenge_says_what_the_key_is() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for said, kind, public in [
        (_spki(key), "private", _spki(key)),
        (None, "secret", None),
        ("absent", "unknown", None),
    ]:
        broker = V1Broker(b"k", public_key=said)
        got = request_challenge(_transport(broker, []), KEY_ID)
        assert (got.kind, got.public_key, got.attestation_type) == (kind, public, "TDX")
        assert got.nonce == broker.nonces[-1] and broker.spkis == []  # nothing else was asked


def test_v1_challenge_with_a_bad_public_key_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not a DER SubjectPublicKeyInfo"):
        request_challenge(_transport(V1Broker(b"k", public_key=b"junk"), []), KEY_ID)


def test_v1_uses_the_challenge_it_is_given_then_checks_the_release_against_it() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    broker = V1Broker(_pkcs8(key), public_key=_spki(key))
    transport = _transport(broker, [])
    challenge = request_challenge(transport, KEY_ID)
    got = fetch_key(transport, KEY_ID, FakeTee(), challenge=challenge)
    assert got.public_key_der() == _spki(key) and len(broker.nonces) == 1  # the same nonce, once


@pytest.mark.parametrize("said", ["other key", None])
def test_v1_a_release_other_than_announced_is_refused(said: str | None) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    broker = V1Broker(_pkcs8(key), public_key=_spki(other) if said else None)
    with pytest.raises(
        Inconsistent, match="announced a secret" if said is None else "not the key whose public"
    ):
        fetch_key(_transport(broker, []), KEY_ID, FakeTee())
    secret_broker = V1Broker(os.urandom(32), public_key=_spki(key))
    with pytest.raises(Inconsistent, match="not the key whose public half"):
        fetch_key(_transport(secret_broker, []), KEY_ID, FakeTee())
