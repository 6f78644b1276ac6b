"""Auto-unseal: the unseal key kept wrapped by a key that lives elsewhere (``[seal]`` in the config).

* ``pkcs11`` (like Vault's HSM seal): an AES-256 key in the HSM, ``CKA_SENSITIVE`` and not
  extractable, encrypts the unseal key with ``CKM_AES_GCM`` inside the token.
* ``transit`` (like Vault's transit seal): Vault/OpenBao Transit ``encrypt``/``decrypt`` with a
  named key that never leaves Vault.

With either, ``operator init`` returns *recovery* shares: Shamir shares of the same unseal key. They
are for disaster recovery: when the HSM or Transit is lost, ``operator unseal`` with a threshold of
recovery shares opens the barrier (Vault's recovery keys cannot do that; ours can, so keep them as
carefully as unseal shares). The wrapped unseal key is stored with the encrypted root key in
``seal_config`` (see :mod:`keybroker.seal.barrier`), so every replica can auto-unseal.

Start-up: :func:`configure_auto_unseal` attaches the seal to the barrier and unseals when the store
is initialized. When the seal backend is down it retries in the background with backoff, so the
service unseals by itself once the backend returns.
"""

from __future__ import annotations

import base64
import logging
import threading

from keybroker.errors import BackendUnavailable, KeybrokerError
from keybroker.seal.barrier import AutoSeal, Barrier
from keybroker.seal.config import Pkcs11SealSettings, SealSettings, TransitSealSettings

log = logging.getLogger("keybroker.seal")

_AAD = b"keybroker/unseal-key/v1"


# --- seals ---------------------------------------------------------------------------------------


class Pkcs11Seal:
    seal_type = "pkcs11"

    def __init__(self, cfg: Pkcs11SealSettings) -> None:
        from keybroker.keystores.pkcs11 import Pkcs11Connector

        self.cfg = cfg
        self.token = Pkcs11Connector(cfg, "pkcs11 seal")

    def describe(self) -> str:
        return f"PKCS#11 key {self.cfg.key_label!r} in token {self.cfg.token_label!r}"

    def _key(self, s: object, create: bool) -> object:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        assert isinstance(s, pkcs11.Session)
        found = list(
            s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.cfg.key_label})
        )
        if len(found) > 1:
            raise BackendUnavailable(
                f"{len(found)} keys are labelled {self.cfg.key_label!r} in the token", backend="pkcs11 seal"
            )
        if found:
            return found[0]
        if not create:
            raise BackendUnavailable(
                f"the seal key {self.cfg.key_label!r} is not in token {self.cfg.token_label!r}",
                backend="pkcs11 seal",
            )
        return s.generate_key(
            KeyType.AES,
            256,
            label=self.cfg.key_label,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
            },
        )

    def wrap(self, unseal_key: bytes, *, create_key: bool) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        with self.token.session("sealing the unseal key") as s:
            key = self._key(s, create_key)
            iv = s.generate_random(96)
            ct = key.encrypt(  # type: ignore[attr-defined]
                unseal_key, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, _AAD, 128)
            )
            return bytes(iv) + bytes(ct)

    def unwrap(self, blob: bytes) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        with self.token.session("unsealing") as s:
            key = self._key(s, False)
            out = key.decrypt(  # type: ignore[attr-defined]
                blob[12:], mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(blob[:12], _AAD, 128)
            )
            return bytes(out)


class TransitSeal:
    seal_type = "transit"

    def __init__(self, cfg: TransitSealSettings) -> None:
        from keybroker.keystores.vault import VaultConnector

        self.cfg = cfg
        self.vault = VaultConnector(cfg, "transit seal")

    def describe(self) -> str:
        return f"Transit key {self.cfg.mount}/keys/{self.cfg.key_name} at {self.cfg.address}"

    def wrap(self, unseal_key: bytes, *, create_key: bool) -> bytes:
        transit = self.vault.client.secrets.transit
        if create_key:
            self.vault.call(
                "creating the transit key",
                lambda: transit.create_key(
                    name=self.cfg.key_name, key_type="aes256-gcm96", mount_point=self.cfg.mount
                ),
            )
        out = self.vault.call(
            "sealing the unseal key",
            lambda: transit.encrypt_data(
                name=self.cfg.key_name,
                plaintext=base64.b64encode(unseal_key).decode(),
                mount_point=self.cfg.mount,
            ),
        )
        return str(out["data"]["ciphertext"]).encode()

    def unwrap(self, blob: bytes) -> bytes:
        transit = self.vault.client.secrets.transit
        out = self.vault.call(
            "unsealing",
            lambda: transit.decrypt_data(
                name=self.cfg.key_name, ciphertext=blob.decode(), mount_point=self.cfg.mount
            ),
        )
        return base64.b64decode(out["data"]["plaintext"])


def build_seal(settings: SealSettings) -> AutoSeal | None:
    cfg = settings.root
    if isinstance(cfg, Pkcs11SealSettings):
        return Pkcs11Seal(cfg)
    if isinstance(cfg, TransitSealSettings):
        return TransitSeal(cfg)
    return None


# --- start-up --------------------------------------------------------------------------------------


def _retry(barrier: Barrier, stop: threading.Event, first_delay: float, max_delay: float) -> None:
    delay = first_delay
    while not stop.wait(delay):
        if not barrier.sealed:
            return
        try:
            if barrier.auto_unseal():
                log.info("auto-unseal succeeded: the seal backend is back")
                return
        except KeybrokerError as exc:
            log.warning("auto-unseal still failing: %s", exc.detail)
        delay = min(delay * 2, max_delay)


def configure_auto_unseal(
    barrier: Barrier,
    settings: SealSettings,
    *,
    retry_first_delay: float = 1.0,
    retry_max_delay: float = 30.0,
) -> threading.Event | None:
    """Attach the configured seal to ``barrier`` and unseal now if the store is initialized.

    Call once at start, before anything else unseals (``Services.build``). When the seal backend
    is unreachable, the barrier stays sealed and a daemon thread retries with exponential backoff;
    the returned event stops it. Returns None when no auto-unseal is configured.
    """
    seal = build_seal(settings)
    if seal is None:
        return None
    barrier.attach_auto_seal(seal)
    try:
        barrier.auto_unseal()
        return None
    except BackendUnavailable as exc:
        log.error("auto-unseal failed (%s); retrying in the background", exc.detail)
    stop = threading.Event()
    threading.Thread(
        target=_retry,
        args=(barrier, stop, retry_first_delay, retry_max_delay),
        name="auto-unseal",
        daemon=True,
    ).start()
    return stop
