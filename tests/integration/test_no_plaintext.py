"""Imported private keys never appear in the database files or the logs."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.helpers.server import Server, keybroker


def _needles(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.b64encode(secret)[:40]]


def test_db_and_logs_hold_no_key_bytes(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", extra=["--dev", "--log-format", "json"]).start()
    try:
        token = keybroker(
            "token", "create", "--data-dir", str(server.data_dir), "--permissions", "*:*"
        ).stdout.strip()
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        aes = os.urandom(32)
        secrets: list[bytes] = [aes]
        with server.client(token) as c:
            for key, alg in ((rsa_key, "RSA"), (ec_key, "EC")):
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                der = key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                secrets += [der, pem]
                r = c.post(
                    "/kbs/v1/keys", json={"key_information": {"algorithm": alg, "key_string": pem.decode()}}
                )
                assert r.status_code == 201, r.text
                kid = r.json()["key_information"]["id"]
                c.post(f"/kbs/v1/keys/{kid}/certificate", json={"common_name": "x", "self_signed": True})
            r = c.post(
                "/kbs/v1/keys",
                json={"key_information": {"algorithm": "AES", "key_string": base64.b64encode(aes).decode()}},
            )
            assert r.status_code == 201
            # a failing import must not echo the key either
            bad = c.post(
                "/kbs/v1/keys",
                json={
                    "key_information": {
                        "algorithm": "EC",
                        "curve_type": "secp384r1",
                        "key_string": secrets[2].decode(),
                    }
                },
            )
            assert bad.status_code == 400
            assert secrets[2].decode()[40:80] not in bad.text
            rsa_d = rsa_key.private_numbers().d.to_bytes(256, "big")
            secrets.append(rsa_d)
    finally:
        server.stop()
    blobs = {p.name: p.read_bytes() for p in server.data_dir.glob("keybroker.db*")}
    blobs["log"] = server.log().encode()
    assert "keybroker.db" in blobs and len(blobs["log"]) > 0
    for name, blob in blobs.items():
        for secret in secrets:
            for needle in _needles(secret):
                if len(needle) >= 16:
                    assert needle not in blob, f"key bytes found in {name}"
