"""POST /kbs/v1/keys/{id}/certificate: who the certificates are trusted by, and which names they may carry."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi.testclient import TestClient

from keybroker.api.services import Services


def _import_ec_key(client: TestClient, headers: dict[str, str]) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """What a key admin with keys:register can do: import a key whose private half they keep."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {"algorithm": "EC", "curve_type": "secp256r1", "key_string": pem}
    r = client.post("/kbs/v1/keys", json={"key_information": info}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["key_information"]["id"]), private


def _rsa_key(client: TestClient, headers: dict[str, str]) -> str:
    info = {"algorithm": "RSA", "key_length": 2048}
    r = client.post("/kbs/v1/keys", json={"key_information": info}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["key_information"]["id"])


@contextmanager
def _tls_server(tmp_path: Path, chain_pem: str, key: ec.EllipticCurvePrivateKey) -> Iterator[int]:
    """A TLS server on a loopback port presenting ``chain_pem``; it accepts handshakes until closed."""
    cert_file, key_file = tmp_path / "impostor.pem", tmp_path / "impostor-key.pem"
    cert_file.write_text(chain_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (close() alone does not)
        listener.close()
        thread.join(timeout=10)


def _handshake(port: int, cafile: Path, hostname: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=hostname) as tls,
    ):
        return tls.recv(5)


def test_a_key_certificate_for_the_brokers_address_is_not_trusted_as_the_broker(
    client: TestClient, admin_headers: dict[str, str], services: Services, tmp_path: Path
) -> None:
    # the attack: a key admin imports a key, has it certified for the broker's own names and serves
    # TLS with it; clients (and `keybroker operator`, which sends unseal shares) pin ca/ca.pem
    kid, private = _import_ec_key(client, admin_headers)
    r = client.post(
        f"/kbs/v1/keys/{kid}/certificate",
        json={"common_name": "keybroker", "sans": ["127.0.0.1", "localhost", "::1"]},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    chain_pem = r.json()["certificate"]
    tls_anchor = services.settings.data_dir / "ca" / "ca.pem"
    issuing = services.settings.data_dir / "ca" / "issuing-ca.pem"
    assert tls_anchor == services.tls_ca.cert_path and issuing == services.issuing_ca.cert_path

    with _tls_server(tmp_path, chain_pem, private) as port:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                _handshake(port, tls_anchor, host)
        # the certificate itself is good: relying parties of workload certificates trust the issuing CA
        assert _handshake(port, issuing, "127.0.0.1") == b"hello"


def test_the_chain_ends_at_the_issuing_ca_which_is_not_the_tls_anchor(
    client: TestClient, admin_headers: dict[str, str], services: Services
) -> None:
    kid = _rsa_key(client, admin_headers)
    r = client.post(
        f"/kbs/v1/keys/{kid}/certificate",
        json={"common_name": "nginx.example", "sans": ["nginx.example"]},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    leaf, issuer = x509.load_pem_x509_certificates(r.json()["certificate"].encode())
    on_disk = x509.load_pem_x509_certificate(services.issuing_ca.cert_path.read_bytes())
    anchor = x509.load_pem_x509_certificate(services.tls_ca.cert_path.read_bytes())
    assert issuer == on_disk and issuer != anchor and issuer.public_key() != anchor.public_key()
    leaf.verify_directly_issued_by(issuer)
    with pytest.raises(ValueError):
        leaf.verify_directly_issued_by(anchor)
    # each CA can sign only end-entity certificates
    for ca in (issuer, anchor):
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == 0
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    got = client.get(f"/kbs/v1/keys/{kid}/certificate", headers=admin_headers).json()
    assert (got["serial"], got["certificate"]) == (r.json()["serial"], r.json()["certificate"]), (
        got,
        r.json(),
    )


def _certify(client: TestClient, headers: dict[str, str], kid: str, **body: Any) -> Any:
    return client.post(f"/kbs/v1/keys/{kid}/certificate", json=body, headers=headers)


def _sans(response: Any) -> list[str]:
    leaf = x509.load_pem_x509_certificates(response.json()["certificate"].encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def test_names_are_put_in_one_canonical_form(client: TestClient, admin_headers: dict[str, str]) -> None:
    kid = _rsa_key(client, admin_headers)
    r = _certify(
        client,
        admin_headers,
        kid,
        common_name="Bücher-Laden",
        sans=["Bücher.Example", "xn--bcher-kva.example", "*.Svc.Example", "2001:DB8::7", "192.0.2.7", "a.b"],
    )
    assert r.status_code == 201, r.text
    assert _sans(r) == ["xn--bcher-kva.example", "*.svc.example", "2001:db8::7", "192.0.2.7", "a.b"]
    leaf = x509.load_pem_x509_certificates(r.json()["certificate"].encode())[0]
    assert leaf.subject.rfc4514_string() == "CN=Bücher-Laden"
    # a common name of 32 two-byte characters (64 bytes) fits; without sans it is the one name
    assert _certify(client, admin_headers, kid, common_name="é" * 32, sans=["x.example"]).status_code == 201
    r = _certify(client, admin_headers, kid, common_name="münchen.example")
    assert r.status_code == 201 and _sans(r) == ["xn--mnchen-3ya.example"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"common_name": "é" * 64}, "common_name", "64 bytes"),
        ({"common_name": "a" * 65}, "common_name", "64"),
        ({"common_name": "ok", "sans": ["a/b"]}, "sans", "'a/b'"),
        ({"common_name": "ok", "sans": ["u@a.b"]}, "sans", "'u@a.b'"),
        ({"common_name": "ok", "sans": ["a\x00b"]}, "sans.0", "U+0000"),  # refused by the JSON reader
        ({"common_name": "ok", "sans": ["fe80::1%eth0"]}, "sans", "zone id"),
        ({"common_name": "ok", "sans": ["0.0.0.0"]}, "sans", "unspecified"),
        ({"common_name": "ok", "sans": ["01.2.3.4"]}, "sans", "all digits"),
        ({"common_name": "ok", "sans": ["1.2.3"]}, "sans", "all digits"),
        ({"common_name": "ok", "sans": ["a..b"]}, "sans", "empty label"),
        ({"common_name": "ok", "sans": ["example.com."]}, "sans", "empty label"),
        ({"common_name": "ok", "sans": ["-a.example"]}, "sans", "'-a'"),
        ({"common_name": "ok", "sans": ["a_b.example"]}, "sans", "'a_b'"),
        ({"common_name": "ok", "sans": ["x" * 64 + ".example"]}, "sans", "1 to 63"),
        # 244 characters, 284 as A-labels
        ({"common_name": "ok", "sans": [".".join(["a" * 47 + "ü"] * 5)]}, "sans", "more than 253"),
        ({"common_name": "ok", "sans": ["*.com"]}, "sans", "wildcard"),
        ({"common_name": "ok", "sans": ["*"]}, "sans", "'*'"),
        ({"common_name": "ok", "sans": ["a.*.example"]}, "sans", "'*'"),
        ({"common_name": "ok", "sans": ["xn--zz.example"]}, "sans", "A-label"),
        ({"common_name": "ok", "sans": ["a\u200db.example"]}, "sans", "IDNA"),
        ({"common_name": "ok", "sans": ["\u202eevil.example"]}, "sans", "U+202E"),
        ({"common_name": "ok", "sans": ["ok.example", "bad name"]}, "sans", "'bad name'"),
        ({"common_name": "a\x00b"}, "common_name", "U+0000"),
        ({"common_name": "\u202egnp.exe"}, "common_name", "U+202E"),
        ({"common_name": " padded"}, "common_name", "white space"),
        ({"common_name": "My Service"}, "common_name", "only name"),
    ],
)
def test_bad_names_are_400_naming_the_field_and_nothing_is_stored(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, Any], field: str, says: str
) -> None:
    kid = _rsa_key(client, admin_headers)
    r = _certify(client, admin_headers, kid, **body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field and says in r.json()["detail"], r.json()
    assert client.get(f"/kbs/v1/keys/{kid}/certificate", headers=admin_headers).status_code == 404
    # the self-signed path checks the same way, before it reads the key
    r = _certify(client, admin_headers, kid, self_signed=True, **body)
    assert r.status_code == 400 and r.json()["field"] == field
