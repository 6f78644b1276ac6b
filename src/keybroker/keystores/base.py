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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.orm import Session

from keybroker.errors import BackendUnavailable, KeybrokerError
from keybroker.keystores.material import KeyMaterial, KeySpec
from keybroker.wire.envelope import OAEP_SHA256, TransferWrap, software_wrap, trim_der_padding

__all__ = ["OAEP_SHA256", "TransferWrap", "software_wrap", "trim_der_padding"]  # re-exported for the stores

log = logging.getLogger("keybroker.keystores")


class RootKeyHolder(Protocol):
    """Holds the root key while the key store is unsealed (``keybroker.seal.barrier.Barrier``);
    ``root_key`` raises ``Sealed`` otherwise. The builtin key store seals under it."""

    def root_key(self) -> bytes: ...


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
