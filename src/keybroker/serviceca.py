"""The service's local CA and TLS server certificate, created in the data dir on first start
(the seed's CMS role). The CA's SHA-384 fingerprint is what clients pin."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.keys.certs import PrivateKey, issue_leaf, make_ca


@dataclass(frozen=True)
class ServiceCA:
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path

    @property
    def fingerprint_sha384(self) -> str:
        return self.cert.fingerprint(hashes.SHA384()).hex()


def _write_private(path: Path, key: PrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_or_create_ca(data_dir: Path) -> ServiceCA:
    d = data_dir / "ca"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = d / "ca.pem", d / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return ServiceCA(
            x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path), cert_path
        )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = make_ca(
        key, "keybroker service CA", datetime.now(UTC) - timedelta(minutes=5), timedelta(days=3650)
    )
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ServiceCA(cert, key, cert_path)


def load_or_create_server_cert(data_dir: Path, ca: ServiceCA, hostnames: list[str]) -> tuple[Path, Path]:
    """Return (cert chain path, key path) of the HTTPS server certificate."""
    d = data_dir / "tls"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = d / "server.pem", d / "server-key.pem"
    if cert_path.exists() and key_path.exists():
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if existing.not_valid_after_utc > datetime.now(UTC) + timedelta(days=7):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue_leaf(
        subject_public_key=key.public_key(),
        common_name="keybroker",
        sans=hostnames,
        not_before=datetime.now(UTC) - timedelta(minutes=5),
        validity=timedelta(days=397),
        issuer_cert=ca.cert,
        issuer_key=ca.key,
    )
    _write_private(key_path, key)
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    return cert_path, key_path
