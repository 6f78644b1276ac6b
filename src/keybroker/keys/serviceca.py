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

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
#: A sealed replica's certificate before it has one from the TLS anchor (``bootstrap_server_cert``).
BOOTSTRAP_CA, BOOTSTRAP_CERT, BOOTSTRAP_KEY = "bootstrap-ca.pem", "bootstrap.pem", "bootstrap-key.pem"
BOOTSTRAP_CA_NAME = "keybroker bootstrap CA (one sealed replica, trusted by nothing)"
BOOTSTRAP_VALIDITY = timedelta(days=30)
TLS_CA_NAME = "keybroker TLS CA"
ISSUING_CA_NAME = "keybroker issuing CA"
CA_VALIDITY = timedelta(days=3650)
SERVER_CERT_VALIDITY = timedelta(days=397)
#: The server certificate is replaced this long before it expires.
SERVER_CERT_RENEW = timedelta(days=7)


class ServiceCA:
    """One of the local CAs: its certificate (always at hand) and its private key, either read from
    the data dir (a CA not yet in the database) or opened from the database under the seal (raises
    ``Sealed`` while sealed). Shared by every replica, so it may be replaced in place when this
    replica adopts the one the others use (:mod:`keybroker.replica`)."""

    def __init__(
        self, cert: x509.Certificate, key: PrivateKey | Callable[[], PrivateKey], cert_path: Path
    ) -> None:
        self.cert = cert
        self.cert_path = cert_path
        self._key = key
        self._opened: PrivateKey | None = None

    @property
    def key(self) -> PrivateKey:
        """The private key; one under the seal is opened once and kept until :meth:`forget` (the
        replica calls it when it is sealed), as the root key is."""
        key = self._key
        if not callable(key):
            return key
        opened = self._opened
        if opened is None:
            opened = self._opened = key()
        return opened

    def forget(self) -> None:
        self._opened = None

    @property
    def key_in_data_dir(self) -> bool:
        """Whether the key is the data dir's file (not yet in the database)."""
        return not callable(self._key)

    def replace(self, cert: x509.Certificate, key: PrivateKey | Callable[[], PrivateKey]) -> None:
        self.cert, self._key, self._opened = cert, key, None

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


def load_or_create_ca(
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
    tls, _ = load_or_create_ca(d, TLS_CA_CERT, TLS_CA_KEY, TLS_CA_NAME)
    issuing, created = load_or_create_ca(d, ISSUING_CA_CERT, ISSUING_CA_KEY, ISSUING_CA_NAME)
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


@contextmanager
def _tls_dir_locked(data_dir: Path) -> Iterator[Path]:
    """The data dir's ``tls/``, locked against the other processes serving from it (``--workers``):
    the certificate and its key are two files, written and read as a pair."""
    d = data_dir / TLS_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _current(d: Path, ca: ServiceCA, hostnames: list[str]) -> tuple[Path, Path] | None:
    cert_path, key_path = d / SERVER_CERT, d / SERVER_KEY
    if not (cert_path.exists() and key_path.exists()):
        return None
    existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if (
        existing.not_valid_after_utc > datetime.now(UTC) + SERVER_CERT_RENEW
        and ca.issued(existing)
        and _covers(existing, hostnames)
    ):
        return cert_path, key_path
    return None


def current_server_cert(data_dir: Path, ca: ServiceCA, hostnames: list[str]) -> tuple[Path, Path] | None:
    """The data dir's HTTPS certificate (chain path, key path) if it can be served as it is: issued by
    ``ca``, naming every one of ``hostnames``, and not within :data:`SERVER_CERT_RENEW` of its end."""
    with _tls_dir_locked(data_dir) as d:
        return _current(d, ca, hostnames)


def load_or_create_server_cert(data_dir: Path, ca: ServiceCA, hostnames: list[str]) -> tuple[Path, Path]:
    """Return (cert chain path, key path) of the HTTPS server certificate, issued by the TLS anchor
    ``ca``. A new one replaces it when it is near its end, was not signed by ``ca`` (a replaced
    anchor) or does not name every one of ``hostnames``. Needs ``ca``'s key only to issue (``Sealed``
    when it is under the seal and the replica is sealed)."""
    with _tls_dir_locked(data_dir) as d:
        found = _current(d, ca, hostnames)
        if found is not None:
            return found
        issuer_key = ca.key
        key = ec.generate_private_key(ec.SECP384R1())
        cert = issue_leaf(
            subject_public_key=key.public_key(),
            common_name="keybroker",
            sans=hostnames,
            not_before=datetime.now(UTC) - timedelta(minutes=5),
            validity=SERVER_CERT_VALIDITY,
            issuer_cert=ca.cert,
            issuer_key=issuer_key,
            extended_key_usage=SERVER_EKU,
        )
        cert_path, key_path = d / SERVER_CERT, d / SERVER_KEY
        _write_private(key_path, key)
        _write_public(
            cert_path,
            cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM),
        )
        return cert_path, key_path


def bootstrap_server_cert(data_dir: Path, hostnames: list[str]) -> tuple[Path, Path, Path]:
    """A certificate for a replica that has none from the TLS anchor and cannot issue one yet (sealed,
    the anchor's key under the seal): issued by a throwaway CA of this data dir, which nothing trusts
    but the operator commands on this host (they pin what ``server.json`` names). Returns (cert
    chain path, key path, that CA's certificate path)."""
    with _tls_dir_locked(data_dir) as d:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        now = datetime.now(UTC) - timedelta(minutes=5)
        ca_cert = make_ca(ca_key, BOOTSTRAP_CA_NAME, now, BOOTSTRAP_VALIDITY)
        key = ec.generate_private_key(ec.SECP384R1())
        cert = issue_leaf(
            subject_public_key=key.public_key(),
            common_name="keybroker (sealed, bootstrap)",
            sans=hostnames,
            not_before=now,
            validity=BOOTSTRAP_VALIDITY,
            issuer_cert=ca_cert,
            issuer_key=ca_key,
            extended_key_usage=SERVER_EKU,
        )
        anchor, cert_path, key_path = d / BOOTSTRAP_CA, d / BOOTSTRAP_CERT, d / BOOTSTRAP_KEY
        _write_private(key_path, key)
        _write_public(anchor, ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_public(
            cert_path,
            cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM),
        )
        return cert_path, key_path, anchor


def remove_bootstrap(data_dir: Path) -> None:
    """Drop the bootstrap certificate once the replica serves one from the TLS anchor."""
    with _tls_dir_locked(data_dir) as d:
        for name in (BOOTSTRAP_CA, BOOTSTRAP_CERT, BOOTSTRAP_KEY):
            (d / name).unlink(missing_ok=True)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    """Write a CA certificate (public) into the data dir, replacing the file whole."""
    _write_public(path, cert.public_bytes(serialization.Encoding.PEM))


def move_aside(directory: Path, names: tuple[str, ...], why: str) -> Path | None:
    """Move the files ``names`` of ``directory`` into a new ``replaced-<time>`` directory beside
    them (kept, never deleted: they may be a CA someone still trusts). Returns it (None: none existed)."""
    present = [directory / n for n in names if (directory / n).exists()]
    if not present:
        return None
    aside = directory / f"replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
    aside.mkdir(mode=0o700)
    for path in present:
        os.replace(path, aside / path.name)
    log.warning("moved %s to %s: %s", ", ".join(p.name for p in present), aside, why)
    return aside


def load_private_key(pem: bytes, what: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{what} is not an EC private key", field="data_dir")
    return key


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
