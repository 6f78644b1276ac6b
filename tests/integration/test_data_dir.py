"""The data dir of a real ``keybroker serve``: the modes of what it creates, and the upgrade of a data
dir laid out before the TLS anchor and the issuing CA were separated."""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.helpers.server import Server, keybroker


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_every_file_is_private_in_a_data_dir_that_already_existed_0755(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # whatever the test process's umask
    old_umask = os.umask(0o022)  # what a service manager or a shell typically gives
    try:
        server = Server(data, extra=["--dev"]).start()
        try:
            admin = keybroker("token", "create", "--data-dir", str(data), "--permissions", "*:*")
            assert admin.returncode == 0, admin.stderr
            with server.client(admin.stdout.strip()) as c:  # writes: the WAL grows, the audit log
                r = c.post("/kbs/v1/keys", json={"key_information": {"algorithm": "AES", "key_length": 256}})
                assert r.status_code == 201, r.text
        finally:
            server.stop()
    finally:
        os.umask(old_umask)
    modes = _modes(data)
    expected = {"keybroker.db", "token-signing-key.pem", "dev-unseal.key", "ca/ca.pem", "ca/ca-key.pem"}
    expected |= {"ca/issuing-ca.pem", "ca/issuing-ca-key.pem", "tls/server.pem", "tls/server-key.pem"}
    assert expected <= set(modes), sorted(modes)
    assert any(name.startswith("dev-pki/") for name in modes)
    loose = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode & 0o077 or mode != (0o700 if (data / name).is_dir() else 0o600)
    }
    assert loose == {}, loose
    # the data dir's own mode is the operator's: reported once, left alone
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    warnings = [line for line in server.log().splitlines() if "is open to group or others" in line]
    assert len(warnings) == 1 and "mode 0755" in warnings[0], server.log()


def _old_service_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA as the code before the split created it: ``keybroker service CA``, P-384, path length 0,
    signing both the broker's TLS certificate and key certificates."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keybroker service CA")])
    now = datetime.now(UTC) - timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def _old_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public: ec.EllipticCurvePublicKey,
    names: list[str],
) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.now(UTC) - timedelta(days=30)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=397))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def test_an_old_layout_data_dir_keeps_its_tls_anchor_and_gains_the_issuing_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data, extra=["--dev"]).start()
    admin = keybroker("token", "create", "--data-dir", str(data), "--permissions", "*:*", "--ttl", "1h")
    assert admin.returncode == 0, admin.stderr
    token = admin.stdout.strip()
    with server.client(token) as c:
        r = c.post("/kbs/v1/keys", json={"key_information": {"algorithm": "EC", "curve_type": "secp384r1"}})
        assert r.status_code == 201, r.text
        kid = r.json()["key_information"]["id"]
        public = serialization.load_pem_public_key(r.json()["key_information"]["public_key"].encode())
        assert isinstance(public, ec.EllipticCurvePublicKey)
    server.stop()

    # lay the data dir out as the code before the split did: one CA for everything, a TLS
    # certificate and a key certificate (for the broker's own address) both signed by it
    ca_dir = data / "ca"
    for name in ("ca.pem", "ca-key.pem", "issuing-ca.pem", "issuing-ca-key.pem"):
        (ca_dir / name).unlink()
    old_ca, old_key = _old_service_ca(ca_dir)
    tls_key = ec.generate_private_key(ec.SECP384R1())
    names = ["127.0.0.1", "::1", "localhost"]
    (data / "tls" / "server.pem").write_bytes(
        _pem(_old_leaf(old_ca, old_key, tls_key.public_key(), names), old_ca)
    )
    (data / "tls" / "server-key.pem").write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    legacy = _old_leaf(old_ca, old_key, public, ["127.0.0.1"])
    con = sqlite3.connect(data / "keybroker.db")
    con.execute(
        "INSERT INTO certificates (key_id, pem, serial, not_after, created_at) VALUES (?, ?, ?, ?, ?)",
        (
            kid,
            _pem(legacy).decode(),
            format(legacy.serial_number, "x"),
            legacy.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S.%f"),
            (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S.%f"),
        ),
    )
    # and its database as before the CAs were shared through it (table shared_secrets empty): the
    # first start just now sealed this data dir's CAs into it
    con.execute("DELETE FROM shared_secrets WHERE name LIKE 'ca:%'")
    con.commit()
    con.close()
    before = {p: (data / p).read_bytes() for p in ("ca/ca.pem", "ca/ca-key.pem", "tls/server.pem")}

    # the upgrade: same pin, same TLS certificate; a new issuing CA
    server.start()
    try:
        assert {p: (data / p).read_bytes() for p in before} == before
        pinned = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
        assert httpx.get(server.url + "/healthz", verify=pinned).status_code == 200
        issuing = x509.load_pem_x509_certificate((ca_dir / "issuing-ca.pem").read_bytes())
        assert issuing.public_key() != old_ca.public_key()
        assert "1 key certificate(s) issued before this version were signed by the TLS anchor" in server.log()
        assert kid in server.log()

        with server.client(token) as c:
            # the stored certificate is still served with the CA that signed it
            got = c.get(f"/kbs/v1/keys/{kid}/certificate").json()
            assert x509.load_pem_x509_certificates(got["certificate"].encode()) == [legacy, old_ca]
            # certified again: by the issuing CA, not by the pinned anchor
            r = c.post(f"/kbs/v1/keys/{kid}/certificate", json={"common_name": "x", "sans": ["127.0.0.1"]})
            assert r.status_code == 201, r.text
            leaf, issuer = x509.load_pem_x509_certificates(r.json()["certificate"].encode())
            assert issuer == issuing
            leaf.verify_directly_issued_by(issuing)
            with pytest.raises(ValueError):
                leaf.verify_directly_issued_by(old_ca)
    finally:
        server.stop()

    # once no key certificate chains to the TLS anchor, the start-up warning is gone
    server.start()
    server.stop()
    assert server.log().count("were signed by the TLS anchor") == 1
