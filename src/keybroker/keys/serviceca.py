"""The service's two local CAs and its TLS server certificate, created in the data dir on first start
(the seed's CMS role).

Two trust anchors, never one, so that no certificate an admin can obtain is trusted as the broker:

- ``ca/ca.pem`` (the **TLS anchor**) signs the broker's own HTTPS certificate and nothing else.
  Clients and ``keybroker operator`` pin it (or its SHA-384 fingerprint).
- ``ca/issuing-ca.pem`` (the **issuing CA**) signs the key certificates of
  ``POST /kbs/v1/keys/{id}/certificate``, for whatever names the admin asks. Relying parties of
  those workload certificates (nginx's clients) trust it; nothing of the broker's does.

A data dir created before the split keeps its ``ca/ca.pem`` as the TLS anchor (clients keep their
pin) and gains the issuing CA at the next start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.errors import InvalidInput
from keybroker.keys.certs import SERVER_EKU, PrivateKey, issue_leaf, issued_by, make_ca, subject_alt_names

log = logging.getLogger("keybroker")

CA_DIR = "ca"
TLS_CA_CERT, TLS_CA_KEY = "ca.pem", "ca-key.pem"
ISSUING_CA_CERT, ISSUING_CA_KEY = "issuing-ca.pem", "issuing-ca-key.pem"
TLS_DIR = "tls"
TLS_CA_NAME = "keybroker TLS CA"
ISSUING_CA_NAME = "keybroker issuing CA"
CA_VALIDITY = timedelta(days=3650)
SERVER_CERT_VALIDITY = timedelta(days=397)
#: The server certificate is replaced this long before it expires.
SERVER_CERT_RENEW = timedelta(days=7)


@dataclass(frozen=True)
class ServiceCA:
    """One of the local CAs: its certificate, its private key and where the certificate is."""

    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path

    @property
    def fingerprint_sha384(self) -> str:
        return self.cert.fingerprint(hashes.SHA384()).hex()

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert``."""
        return issued_by(cert, self.cert)


@dataclass(frozen=True)
class ServiceCAs:
    #: Anchors the broker's HTTPS (``ca/ca.pem``): what clients pin. Signs nothing else.
    tls: ServiceCA
    #: Signs key certificates (``ca/issuing-ca.pem``): what relying parties of workload certs trust.
    issuing: ServiceCA


def _write_private(path: Path, key: PrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _write_public(path: Path, data: bytes) -> None:
    """Write a certificate file: replaced whole (no reader sees half of it), mode 0600 like the rest
    of the data dir (it is no secret: copy it out to whoever needs it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{path} is not an EC private key", field="data_dir")
    return key


def _load_or_create(
    directory: Path, cert_name: str, key_name: str, common_name: str
) -> tuple[ServiceCA, bool]:
    """The CA whose certificate and key are ``cert_name`` and ``key_name`` in ``directory``, created
    when neither exists. One without the other is refused: replacing a CA that clients pin must be
    the operator's decision (remove both files), never a side effect of a lost file."""
    cert_path, key_path = directory / cert_name, directory / key_name
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = _load_key(key_path)
        if cert.public_key() != key.public_key():
            raise InvalidInput(f"{cert_path} and {key_path} are not one key pair", field="data_dir")
        return ServiceCA(cert, key, cert_path), False
    if cert_path.exists() or key_path.exists():
        present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise InvalidInput(
            f"{present} exists but {missing} does not: restore it, or remove both to create a new CA "
            "(clients that trust the old one must then be given the new one)",
            field="data_dir",
        )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = make_ca(key, common_name, datetime.now(UTC) - timedelta(minutes=5), CA_VALIDITY)
    _write_private(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return ServiceCA(cert, key, cert_path), True


def load_or_create_cas(data_dir: Path) -> ServiceCAs:
    """The TLS anchor and the issuing CA of ``data_dir``, each created if absent (an old-layout data
    dir keeps its ``ca/ca.pem`` as the TLS anchor and gains the issuing CA)."""
    d = data_dir / CA_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls, _ = _load_or_create(d, TLS_CA_CERT, TLS_CA_KEY, TLS_CA_NAME)
    issuing, created = _load_or_create(d, ISSUING_CA_CERT, ISSUING_CA_KEY, ISSUING_CA_NAME)
    if created:
        log.info("created the issuing CA for key certificates: %s", issuing.cert_path)
    if tls.cert.public_key() == issuing.cert.public_key():
        raise InvalidInput(
            f"{tls.cert_path} and {issuing.cert_path} must be two CAs, not one", field="data_dir"
        )
    return ServiceCAs(tls, issuing)


def _covers(cert: x509.Certificate, hostnames: list[str]) -> bool:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(n in names for n in subject_alt_names(hostnames, field="listen"))


def load_or_create_server_cert(data_dir: Path, ca: ServiceCA, hostnames: list[str]) -> tuple[Path, Path]:
    """Return (cert chain path, key path) of the HTTPS server certificate, issued by the TLS anchor
    ``ca``. A new one replaces it when it is near its end, was not signed by ``ca`` (a replaced
    anchor) or does not name every one of ``hostnames``."""
    d = data_dir / TLS_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = d / "server.pem", d / "server-key.pem"
    if cert_path.exists() and key_path.exists():
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if (
            existing.not_valid_after_utc > datetime.now(UTC) + SERVER_CERT_RENEW
            and ca.issued(existing)
            and _covers(existing, hostnames)
        ):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue_leaf(
        subject_public_key=key.public_key(),
        common_name="keybroker",
        sans=hostnames,
        not_before=datetime.now(UTC) - timedelta(minutes=5),
        validity=SERVER_CERT_VALIDITY,
        issuer_cert=ca.cert,
        issuer_key=ca.key,
        extended_key_usage=SERVER_EKU,
    )
    _write_private(key_path, key)
    _write_public(
        cert_path,
        cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM),
    )
    return cert_path, key_path
