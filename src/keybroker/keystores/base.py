"""The key-store interface. Implementations: builtin (sealed, in the database); vault, kmip and
pkcs11 arrive with the key-manager issue."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from keybroker.keys.material import KeyMaterial


class KeyStore(Protocol):
    #: Short name stored with each key ("builtin", "vault", ...).
    name: str

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        """Store ``material`` in the same transaction as the key's metadata; return the backend ref."""
        ...

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        """Return the secret bytes for wrapping (raw AES or PKCS#8 DER)."""
        ...

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None: ...

    def register(self, session: Session, key_id: str, backend_id: str) -> KeyMaterial:
        """Adopt a key that already lives in the backend; return its spec and public part."""
        ...

    def health(self) -> None:
        """Raise BackendUnavailable or Sealed when keys cannot be served."""
        ...
