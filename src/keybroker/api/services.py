"""Everything a request handler may use, built once per process from Settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from keybroker.auth.tokens import TokenService, load_or_create_signing_key
from keybroker.config import Settings
from keybroker.keys.service import KeyService
from keybroker.keystores.base import KeyStore
from keybroker.keystores.factory import build_keystore
from keybroker.seal.barrier import Barrier
from keybroker.serviceca import ServiceCA, load_or_create_ca
from keybroker.store.db import Database

log = logging.getLogger("keybroker")

TOKEN_KEY_FILE = "token-signing-key.pem"  # noqa: S105 - a file name
DEV_UNSEAL_FILE = "dev-unseal.key"


@dataclass
class Services:
    settings: Settings
    db: Database
    barrier: Barrier
    keystore: KeyStore
    keys: KeyService
    tokens: TokenService
    ca: ServiceCA

    @classmethod
    def build(cls, settings: Settings) -> Services:
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = Database(settings.database_url)
        db.migrate()
        barrier = Barrier(db)
        keystore = build_keystore(settings.keystore, barrier)
        ca = load_or_create_ca(data_dir)
        tokens = TokenService(load_or_create_signing_key(data_dir / TOKEN_KEY_FILE))
        services = cls(settings, db, barrier, keystore, KeyService(db, keystore, ca), tokens, ca)
        if settings.dev:
            services._dev_unseal(data_dir / DEV_UNSEAL_FILE)
        return services

    def _dev_unseal(self, key_file: Path) -> None:
        status = self.barrier.status()
        if not status.initialized:
            self.barrier.init_devfile(key_file)
            status = self.barrier.status()
        if status.seal_type == "devfile":
            self.barrier.unseal_devfile(key_file)
            log.warning(
                "DEV MODE: the key store auto-unsealed from %s. The unseal key sits next to the data: "
                "never use --dev for real keys.",
                key_file,
            )
        else:
            log.warning("--dev given but the key store uses the %s seal: unseal it by hand", status.seal_type)
