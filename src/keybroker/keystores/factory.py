"""Build the configured key store."""

from __future__ import annotations

from keybroker.keystores.base import KeyStore
from keybroker.keystores.builtin import BuiltinKeyStore
from keybroker.keystores.config import KeystoreSettings
from keybroker.seal.barrier import Barrier


def build_keystore(settings: KeystoreSettings, barrier: Barrier) -> KeyStore:
    return BuiltinKeyStore(barrier)
