"""The key-store interface and what every implementation shares.

Implementations: ``builtin`` (sealed, in the database), ``vault`` (HashiCorp Vault / OpenBao KV v2),
``kmip`` (any KMIP server) and ``pkcs11`` (an HSM). The builtin store writes in the caller's
database transaction. The others are *external*: their writes are not part of the database
transaction, so :class:`keybroker.keys.service.KeyService` writes the backend first, the metadata
row second, and destroys the backend object again when the row cannot be written.

Ownership: a store destroys only objects that keybroker created for that key id. A key adopted with
``register`` (register mode, ``kmip_key_id``) belongs to whoever made it: deleting it in keybroker
forgets it and leaves the backend object alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

from keybroker.errors import BackendUnavailable, KeybrokerError
from keybroker.keys.material import KeyMaterial, KeySpec

log = logging.getLogger("keybroker.keystores")


@dataclass(frozen=True)
class StoredKey:
    """What a store reports about a key it holds. Never carries secret bytes."""

    spec: KeySpec
    #: PEM SubjectPublicKeyInfo for RSA and EC keys; None for AES.
    public_key_pem: str | None
    #: The backend's id for the key (KMIP unique identifier, Vault secret path, PKCS#11
    #: ``id:<hex>`` or ``label:<text>``). None for the builtin store.
    backend_ref: str | None


@dataclass(frozen=True)
class TransferWrap:
    """A key wrapped for one recipient: a fresh AES-256 session key, RSA-OAEP-SHA256 (MGF1-SHA256)
    to the recipient's public key, and the key wrapped under the session key.

    ``key_wrap`` says how: ``A256GCM`` (software stores: AES-256-GCM, ``iv`` the 96-bit nonce,
    ``wrapped_key`` ciphertext || 16-byte tag, the caller's ``aad`` authenticated) or ``A256KWP``
    (HSM: RFC 5649 AES key wrap with padding done inside the token, ``iv`` empty, no AAD).
    The unwrapped bytes are the raw key (AES) or PKCS#8 DER (RSA, EC) in both cases; after an
    ``A256KWP`` unwrap pass them through :func:`trim_der_padding` (SoftHSM 2.6 zero-pads the key
    to a multiple of 8 bytes *before* RFC 5649 and counts the padding in the length).
    """

    wrapped_session_key: bytes
    key_wrap: Literal["A256GCM", "A256KWP"]
    iv: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class CheckResult:
    """One line of ``keybroker keystore check``."""

    step: str
    ok: bool
    detail: str


class KeyStore(Protocol):
    #: Short name stored with each key ("builtin", "vault", "kmip", "pkcs11").
    name: str
    #: True: the material lives outside the database (see the module docstring).
    external: bool

    def create(self, session: Session, key_id: str, spec: KeySpec) -> StoredKey:
        """Generate a new key, inside the backend when it can (HSM, KMIP), and store it."""
        ...

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        """Store imported ``material``; return the backend ref."""
        ...

    def register(self, session: Session, key_id: str, backend_id: str) -> StoredKey:
        """Adopt a key that already lives in the backend; its real algorithm and size are read
        from the backend."""
        ...

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        """Return the secret bytes (raw AES or PKCS#8 DER). HSM keys that are sensitive refuse:
        use :meth:`wrap_for_transfer`."""
        ...

    def wrap_for_transfer(
        self, session: Session, key_id: str, backend_ref: str | None, recipient: rsa.RSAPublicKey, aad: bytes
    ) -> TransferWrap:
        """Wrap the key for ``recipient``. The HSM store does this inside the token."""
        ...

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        """Destroy the material if keybroker created it; forget a registered key."""
        ...

    def list_refs(self) -> list[str]:
        """Backend refs of the objects keybroker created in this backend (to find orphans)."""
        ...

    def health(self) -> None:
        """Raise BackendUnavailable or Sealed when keys cannot be served."""
        ...

    def check(self) -> list[CheckResult]:
        """Connectivity and permission checks for ``keybroker keystore check``; never raises."""
        ...


# --- shared helpers --------------------------------------------------------------------------------

OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def software_wrap(secret: bytes, recipient: rsa.RSAPublicKey, aad: bytes) -> TransferWrap:
    """Wrap ``secret`` for ``recipient`` in this process (the software stores' release path)."""
    session_key = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(12)
    return TransferWrap(
        wrapped_session_key=recipient.encrypt(session_key, OAEP_SHA256),
        key_wrap="A256GCM",
        iv=iv,
        wrapped_key=AESGCM(session_key).encrypt(iv, secret, aad),
    )


def trim_der_padding(data: bytes) -> bytes:
    """Drop up to 7 trailing zero bytes after a DER SEQUENCE (PKCS#8) whose length says so.

    Raw AES keys (16, 24 or 32 bytes, multiples of 8) are never padded and come back unchanged.
    """
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            return data
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    tail = data[end:]
    if 0 < len(tail) < 8 and not any(tail):
        return data[:end]
    return data


@contextmanager
def backend_errors(backend: str, action: str) -> Iterator[None]:
    """Turn anything a backend client library raises into BackendUnavailable naming the backend.

    Client libraries (hvac, PyKMIP, python-pkcs11) raise their own, loosely specified exception
    types, including for network failures deep in their stacks. Our own errors pass through. The
    message carries the exception type only: library messages may echo request data.
    """
    try:
        yield
    except KeybrokerError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring; re-raised as BackendUnavailable
        log.warning("%s: %s failed: %s", backend, action, type(exc).__name__)
        raise BackendUnavailable(
            f"the {backend} key store is unavailable: {action} failed ({type(exc).__name__})",
            backend=backend,
        ) from None


def run_checks(steps: list[tuple[str, Callable[[], str | None]]]) -> list[CheckResult]:
    """Helper for ``check()``: each step is (name, zero-argument callable returning a detail)."""
    out: list[CheckResult] = []
    for step, fn in steps:
        try:
            detail = fn()
            out.append(CheckResult(step, True, detail or "ok"))
        except KeybrokerError as exc:
            out.append(CheckResult(step, False, exc.detail))
            break
        except Exception as exc:  # noqa: BLE001 - a check reports every failure, it never raises
            out.append(CheckResult(step, False, type(exc).__name__))
            break
    return out
