"""Built-in key store: each key sealed under its own data key (AES-256-GCM, AAD = key id), the data
key sealed under the root key held by the barrier. Nothing here is plaintext at rest."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from keybroker import aead, stages
from keybroker.errors import InvalidInput, KeybrokerError, NotFound
from keybroker.keystores import material as km
from keybroker.keystores.base import CheckResult, RootKeyHolder, StoredKey, TransferWrap, software_wrap
from keybroker.keystores.material import KeyMaterial, KeySpec
from keybroker.store.models import KeyMaterial as KeyMaterialRow


def _dek_aad(key_id: str) -> bytes:
    return b"keybroker/dek/v1/" + key_id.encode()


def _key_aad(key_id: str) -> bytes:
    return b"keybroker/key/v1/" + key_id.encode()


#: Prepared once: read on every release of a built-in key.
_MATERIAL = select(KeyMaterialRow.wrapped_dek, KeyMaterialRow.ciphertext).where(
    KeyMaterialRow.key_id == bindparam("key_id")
)


class IntegrityError(KeybrokerError):
    title = "Key store integrity failure"
    status = 500


class BuiltinKeyStore:
    name = "builtin"
    external = False

    def __init__(self, barrier: RootKeyHolder) -> None:
        self._barrier = barrier

    def create(self, session: Session, key_id: str, spec: KeySpec) -> StoredKey:
        material = km.generate(spec)
        return StoredKey(spec, material.public_key_pem, self.put(session, key_id, material))

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
        row = session.connection().execute(_MATERIAL, {"key_id": key_id}).one_or_none()
        if row is None:
            raise NotFound(f"key {key_id} has no material in the built-in key store")
        wrapped_dek, ciphertext = row
        try:
            dek = aead.unseal(root, wrapped_dek, _dek_aad(key_id))
            return aead.unseal(dek, ciphertext, _key_aad(key_id))
        except aead.UnsealError:
            raise IntegrityError(f"key {key_id}: sealed material failed authentication") from None

    @stages.timed("wrap")
    def wrap_for_transfer(
        self, session: Session, key_id: str, backend_ref: str | None, recipient: rsa.RSAPublicKey, aad: bytes
    ) -> TransferWrap:
        return software_wrap(self.fetch(session, key_id, backend_ref), recipient, aad)

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        row = session.get(KeyMaterialRow, key_id)
        if row is not None:
            session.delete(row)

    def register(self, session: Session, key_id: str, backend_id: str) -> StoredKey:
        raise InvalidInput(
            "the built-in key store has no external key ids; kmip_key_id needs a vault, kmip or pkcs11 key store",
            field="key_information.kmip_key_id",
        )

    def list_refs(self) -> list[str]:
        return []

    def health(self) -> None:
        self._barrier.root_key()

    def check(self) -> list[CheckResult]:
        return [CheckResult("backend", True, "keys are sealed in keybroker's own database; nothing external")]
