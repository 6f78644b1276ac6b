"""What a release yields: a private key (RSA/EC, PKCS#8 DER) or a secret (AES key, resource bytes).

:class:`ReleasedKey` never shows its bytes in ``repr`` or ``str``: it may end up in a log line or a
traceback.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.client.errors import OutputError
from keybroker.errors import InvalidInput

Kind = Literal["rsa", "ec", "secret"]


@dataclass(frozen=True)
class ReleasedKey:
    key_id: str
    kind: Kind
    material: bytes = field(repr=False)
    #: RSA key size or EC curve bits; secret length in bits.
    bits: int = 0

    def describe(self) -> str:
        what = {"rsa": f"RSA-{self.bits} private key", "ec": f"EC P-{self.bits} private key"}
        return what.get(self.kind, f"{self.bits}-bit secret")

    def private_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if self.kind == "secret":
            raise InvalidInput(f"{self.key_id} is a secret, not a private key", field="key")
        key = serialization.load_der_private_key(self.material, password=None)
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        return key

    def public_key_der(self) -> bytes:
        """DER SubjectPublicKeyInfo of a private key (what the broker's challenge names)."""
        return (
            self.private_key()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def file_bytes(self) -> bytes:
        """PEM (PKCS#8) for private keys, the raw bytes for secrets."""
        if self.kind == "secret":
            return self.material
        return self.private_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def classify(key_id: str, material: bytes) -> ReleasedKey:
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        return ReleasedKey(key_id, "secret", material, len(material) * 8)
    if isinstance(key, rsa.RSAPrivateKey):
        return ReleasedKey(key_id, "rsa", material, key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ReleasedKey(key_id, "ec", material, key.curve.key_size)
    return ReleasedKey(key_id, "secret", material, len(material) * 8)


def holds_private_key(path: Path, public_key_der: bytes) -> bool | None:
    """Whether ``path`` holds the private key (PEM, as ``get-key`` writes it) whose public half is
    ``public_key_der``: None when there is no file, False for anything else there (another key, a
    secret, an unreadable or encrypted file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return False
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return False
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki == public_key_der


def check_writable(path: Path) -> None:
    """Fail before attesting when ``--out`` cannot be written (a released key must not be lost)."""
    directory = path.parent
    if path.is_dir():
        raise InvalidInput(f"--out {path} is a directory", field="out")
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidInput(f"--out {path}: cannot create files in {directory}", field="out")


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (a temp file in the same directory,
    renamed over the target; never a moment with looser permissions)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if not done:
            _unlink(tmp)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
