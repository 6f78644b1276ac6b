"""Built-in key store: each key sealed under its own data key (AES-256-GCM, AAD = key id), the data
key sealed under the root key held by the barrier. Nothing here is plaintext at rest."""

from __future__ import annotations

import os

from sqlalchemy.orm import Session

from keybroker.errors import InvalidInput, KeybrokerError, NotFound
from keybroker.keys.material import KeyMaterial
from keybroker.seal import aead
from keybroker.seal.barrier import Barrier
from keybroker.store.models import KeyMaterial as KeyMaterialRow


def _dek_aad(key_id: str) -> bytes:
    return b"keybroker/dek/v1/" + key_id.encode()


def _key_aad(key_id: str) -> bytes:
    return b"keybroker/key/v1/" + key_id.encode()


class IntegrityError(KeybrokerError):
    title = "Key store integrity failure"
    status = 500


class BuiltinKeyStore:
    name = "builtin"

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        root = self._barrier.root_key()
        dek = os.urandom(32)
        session.add(
            KeyMaterialRow(
                key_id=key_id,
                wrapped_dek=aead.seal(root, dek, _dek_aad(key_id)),
                ciphertext=aead.seal(dek, material.secret, _key_aad(key_id)),
            )
        )
        return None

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        root = self._barrier.root_key()
        row = session.get(KeyMaterialRow, key_id)
        if row is None:
            raise NotFound(f"key {key_id} has no material in the built-in key store")
        try:
            dek = aead.unseal(root, row.wrapped_dek, _dek_aad(key_id))
            return aead.unseal(dek, row.ciphertext, _key_aad(key_id))
        except aead.UnsealError:
            raise IntegrityError(f"key {key_id}: sealed material failed authentication") from None

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        row = session.get(KeyMaterialRow, key_id)
        if row is not None:
            session.delete(row)

    def register(self, session: Session, key_id: str, backend_id: str) -> KeyMaterial:
        raise InvalidInput(
            "the built-in key store has no external key ids; kmip_key_id needs a vault, kmip or pkcs11 key store",
            field="key_information.kmip_key_id",
        )

    def health(self) -> None:
        self._barrier.root_key()
