"""One contract for every key store, through the /kbs/v1 API, against real backends."""

from __future__ import annotations

import base64
import os
import sqlite3
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from keybroker.errors import KeybrokerError, NotFound
from keybroker.keystores.base import OAEP_SHA256, TransferWrap, trim_der_padding
from keybroker.store.models import Key

from .conftest import Broker

AAD = b"keybroker-test-aad"
RECIPIENT = rsa.generate_private_key(public_exponent=65537, key_size=3072)


def unwrap(w: TransferWrap) -> bytes:
    session_key = RECIPIENT.decrypt(w.wrapped_session_key, OAEP_SHA256)
    assert len(session_key) == 32
    if w.key_wrap == "A256GCM":
        return AESGCM(session_key).decrypt(w.iv, w.wrapped_key, AAD)
    assert w.key_wrap == "A256KWP" and w.iv == b""
    return trim_der_padding(aes_key_unwrap_with_padding(session_key, w.wrapped_key))


def release(b: Broker, kid: str) -> bytes:
    with b.services.db.session() as s:
        row = s.get(Key, kid)
        assert row is not None
        return unwrap(
            b.services.keystore.wrap_for_transfer(s, kid, row.backend_ref, RECIPIENT.public_key(), AAD)
        )


def public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    "info",
    [
        {"algorithm": "AES", "key_length": 256},
        {"algorithm": "RSA", "key_length": 2048},
        {"algorithm": "EC", "curve_type": "secp384r1"},
    ],
    ids=["aes256", "rsa2048", "ec384"],
)
def test_generate_then_release(broker: Broker, info: dict[str, Any]) -> None:
    r = broker.create(info, label="contract")
    assert r.status_code == 201, r.text
    ki = r.json()["key_information"]
    with broker.services.db.session() as s:
        row = s.get(Key, ki["id"])
        assert row is not None and row.keystore == broker.services.keystore.name
    if broker.external:
        assert ki["kmip_key_id"] and ki["kmip_key_id"] in broker.services.keystore.list_refs()
    secret = release(broker, ki["id"])
    if info["algorithm"] == "AES":
        assert len(secret) == 32 and ki["public_key"] is None
    else:
        priv = serialization.load_der_private_key(secret, None)
        assert isinstance(priv, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        assert public_pem(priv) == ki["public_key"]  # the released key is the one the API described
        if isinstance(priv, ec.EllipticCurvePrivateKey):
            assert priv.curve.name == "secp384r1"
        else:
            assert priv.key_size == 2048
    with broker.services.db.session() as s:
        if broker.name == "pkcs11":
            with pytest.raises(KeybrokerError) as exc:
                broker.services.keystore.fetch(s, ki["id"], ki["kmip_key_id"])
            assert exc.value.status == 409 and "sensitive HSM key" in exc.value.detail
        else:
            fetched = broker.services.keystore.fetch(s, ki["id"], ki["kmip_key_id"])
            assert fetched == secret


def test_import_round_trip(broker: Broker) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    r = broker.create({"algorithm": "RSA", "key_string": pem})
    assert r.status_code == 201, r.text
    released = serialization.load_der_private_key(release(broker, r.json()["key_information"]["id"]), None)
    assert released.private_numbers() == rsa_key.private_numbers()  # type: ignore[union-attr]

    raw = os.urandom(24)
    r = broker.create({"algorithm": "AES", "key_string": base64.b64encode(raw).decode()})
    assert r.status_code == 201, r.text
    assert r.json()["key_information"]["key_length"] == 192
    assert release(broker, r.json()["key_information"]["id"]) == raw


def test_delete_destroys_material(broker: Broker) -> None:
    ki = broker.create({"algorithm": "AES", "key_length": 128}).json()["key_information"]
    kid, ref = ki["id"], ki["kmip_key_id"]
    assert broker.client.delete(f"/kbs/v1/keys/{kid}", headers=broker.headers).status_code == 204
    assert kid not in broker.listed()
    if broker.external:
        assert ref not in broker.services.keystore.list_refs()
    with broker.services.db.session() as s, pytest.raises(NotFound):
        broker.services.keystore.fetch(s, kid, ref or None)
    # deleting again is a clean 404, not a backend error
    assert broker.client.delete(f"/kbs/v1/keys/{kid}", headers=broker.headers).status_code == 404


def test_failed_database_write_leaves_nothing(broker: Broker) -> None:
    """The metadata row cannot be written (a real SQLite failure): no key listed, and the backend
    object written just before is destroyed again."""
    before_refs = set(broker.services.keystore.list_refs())
    before = broker.listed()
    db_path = broker.services.settings.database_url.removeprefix("sqlite:///")
    con = sqlite3.connect(db_path)
    con.execute("CREATE TRIGGER no_keys BEFORE INSERT ON keys BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    con.commit()
    r = broker.create({"algorithm": "EC", "curve_type": "secp256r1"})
    assert r.status_code == 500, r.text
    assert "PRIVATE" not in r.text and "disk full" not in r.text
    con.execute("DROP TRIGGER no_keys")
    con.commit()
    con.close()
    assert broker.listed() == before
    assert set(broker.services.keystore.list_refs()) == before_refs
