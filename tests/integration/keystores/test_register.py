"""Register mode (``kmip_key_id``): adopt a key made outside keybroker, with its real algorithm and
size read from the backend; deleting it in keybroker leaves the backend object alone."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kmip import enums
from pkcs11 import Attribute, KeyType
from tests.helpers import openbao

from .conftest import Broker, keystore_config, make_broker
from .test_contract import public_pem, release


@pytest.fixture(params=["vault-dev", "kmip", "pkcs11"])
def ext(request: pytest.FixtureRequest, tmp_path: Path) -> Broker:
    return make_broker(request.param, tmp_path / "data", keystore_config(request.param, request))


def _make_outside(b: Broker, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], Any]:
    """A key created by 'someone else' directly in the backend: (backend id, expected info, key)."""
    tag = uuid.uuid4().hex[:8]
    if b.name == "vault-dev":
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        bao: openbao.BaoServer = request.getfixturevalue("bao_dev")
        bao.api("POST", f"keybroker/data/apps/{tag}", {"data": {"tls_key": pem, "owner": "app team"}})
        return f"apps/{tag}#tls_key", {"algorithm": "EC", "key_length": 256, "curve_type": "secp256r1"}, key
    store: Any = b.services.keystore
    if b.name == "kmip":
        with store._session("test set-up") as c:
            uid = str(
                c.create(
                    enums.CryptographicAlgorithm.AES,
                    192,
                    name=f"app-{tag}",
                    cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT],
                )
            )
            c.activate(uid)
        return uid, {"algorithm": "AES", "key_length": 192, "curve_type": None}, None
    with store.token.session("test set-up") as s:
        pub, _ = s.generate_keypair(
            KeyType.RSA,
            2048,
            store=True,
            id=bytes.fromhex(tag),
            label=f"app-{tag}",
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True, Attribute.TOKEN: True},
        )
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
    return f"label:app-{tag}", {"algorithm": "RSA", "key_length": 2048, "curve_type": None}, n


def _still_there(b: Broker, request: pytest.FixtureRequest, ref: str) -> bool:
    store: Any = b.services.keystore
    if b.name == "vault-dev":
        bao: openbao.BaoServer = request.getfixturevalue("bao_dev")
        return "tls_key" in bao.api("GET", f"keybroker/data/{ref.split('#')[0]}")["data"]["data"]
    if b.name == "kmip":
        with store._session("test check") as c:
            return bool(c.get(ref).value)
    with store.token.session("test check") as s:
        return store._find_key(s, ref) is not None


def test_register_reads_the_real_key(ext: Broker, request: pytest.FixtureRequest) -> None:
    backend_id, expected, original = _make_outside(ext, request)
    # the stated algorithm is ignored: the backend's truth wins
    r = ext.create({"algorithm": "AES", "kmip_key_id": backend_id}, label="adopted")
    assert r.status_code == 201, r.text
    ki = r.json()["key_information"]
    assert {k: ki[k] for k in expected} == expected
    assert ki["kmip_key_id"]
    secret = release(ext, ki["id"])
    if expected["algorithm"] == "AES":
        assert len(secret) * 8 == expected["key_length"]
    else:
        priv = serialization.load_der_private_key(secret, None)
        assert public_pem(priv) == ki["public_key"]
        if isinstance(original, int):
            assert isinstance(priv, rsa.RSAPrivateKey) and priv.public_key().public_numbers().n == original
        else:
            assert priv.private_numbers() == original.private_numbers()  # type: ignore[union-attr]
    # keybroker forgets a registered key but never destroys it
    assert ext.client.delete(f"/kbs/v1/keys/{ki['id']}", headers=ext.headers).status_code == 204
    assert _still_there(ext, request, ki["kmip_key_id"])


def test_register_unknown_id_is_400(ext: Broker) -> None:
    missing = {"vault-dev": "apps/does-not-exist", "kmip": "999999", "pkcs11": "label:no-such-key"}[ext.name]
    r = ext.create({"algorithm": "AES", "kmip_key_id": missing})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "key_information.kmip_key_id" and ext.listed() == set()
