"""Build the configured key store. Backend client libraries are imported only when selected."""

from __future__ import annotations

from keybroker.keystores.base import KeyStore, RootKeyHolder
from keybroker.keystores.builtin import BuiltinKeyStore
from keybroker.keystores.config import (
    BuiltinKeystore,
    KeystoreSettings,
    KmipKeystore,
    Pkcs11Keystore,
    VaultKeystore,
)


def build_keystore(settings: KeystoreSettings, barrier: RootKeyHolder | None) -> KeyStore:
    """``barrier`` is needed by the builtin store only (None: for the other stores' CLI checks)."""
    cfg = settings.root
    if isinstance(cfg, BuiltinKeystore):
        if barrier is None:
            raise ValueError("the builtin key store needs the barrier")
        return BuiltinKeyStore(barrier)
    if isinstance(cfg, VaultKeystore):
        from keybroker.keystores.vault import VaultKeyStore

        return VaultKeyStore(cfg)
    if isinstance(cfg, KmipKeystore):
        from keybroker.keystores.kmip import KmipKeyStore

        return KmipKeyStore(cfg)
    if isinstance(cfg, Pkcs11Keystore):
        from keybroker.keystores.pkcs11 import Pkcs11KeyStore

        return Pkcs11KeyStore(cfg)
    raise AssertionError(f"unknown key store type {cfg!r}")
