"""HashiCorp Vault / OpenBao key store: one KV version 2 secret per key (hvac).

A key keybroker creates lives at ``<mount>/data/<path_prefix>/<key id>`` as
``{"key": <PEM PKCS#8 or base64 AES>, "algorithm", "key_length", "curve_type", "keybroker_key_id"}``
and is written with check-and-set 0, so an existing secret is never overwritten. Register mode
adopts any secret under the mount by its path (``app/tls`` or ``app/tls#field``; the field defaults
to ``key``) holding a PEM private key (RSA or EC) or a base64 AES key; the algorithm and size come
from the material itself. Registered secrets are never destroyed by keybroker.

Vault KV cannot generate keys: ``create`` generates in this process and stores the result.
Every request has a bounded timeout; failures become 503 ``BackendUnavailable`` naming vault.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hvac  # type: ignore[import-untyped]
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hvac import exceptions as hvac_exc
from sqlalchemy.orm import Session

from keybroker import stages
from keybroker.errors import BackendUnavailable, InvalidInput, NotFound
from keybroker.keystores import material as km
from keybroker.keystores.base import (
    CheckResult,
    StoredKey,
    TransferWrap,
    backend_errors,
    run_checks,
    software_wrap,
)
from keybroker.keystores.config import VaultAppRoleAuth, VaultConnection, VaultKeystore, read_secret
from keybroker.keystores.material import KeyMaterial, KeySpec

log = logging.getLogger("keybroker.keystores.vault")

T = TypeVar("T")
_FIELD = "key"
_REGISTER_FIELD = "key_information.kmip_key_id"


def _check_address(address: str) -> None:
    parts = urlsplit(address)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise InvalidInput(
            f"vault address {address} is plain http on a non-loopback host; use https",
            field="keystore.address",
        )


class VaultConnector:
    """An authenticated hvac client with bounded timeouts, CA pinning and AppRole re-login.

    Shared by the key store and the Transit seal. ``call`` runs one request and maps failures to
    keybroker errors naming the backend (``what``, e.g. "vault" or "transit seal").
    """

    def __init__(self, cfg: VaultConnection, what: str = "vault") -> None:
        _check_address(cfg.address)
        self.cfg = cfg
        self.what = what
        cert = (str(cfg.client_cert), str(cfg.client_key)) if cfg.client_cert and cfg.client_key else None
        verify: str | bool = str(cfg.ca_file) if cfg.ca_file is not None else True
        session = requests.Session()
        session.trust_env = False  # no proxy or CA bundle from the environment: the config decides
        session.verify, session.cert = verify, cert  # hvac prefers the session's values over its own
        self.client = hvac.Client(
            url=cfg.address,
            verify=verify,
            cert=cert,
            timeout=cfg.timeout_seconds,
            namespace=cfg.namespace,
            session=session,
        )
        self._lock = threading.Lock()
        self._logged_in = False

    def _login(self) -> None:
        auth = self.cfg.auth
        if isinstance(auth, VaultAppRoleAuth):
            self.client.auth.approle.login(
                role_id=auth.role_id,
                secret_id=read_secret(auth.secret_id, auth.secret_id_file),
                mount_point=auth.mount,
            )
        else:
            self.client.token = read_secret(auth.token, auth.token_file)
        self._logged_in = True

    @contextmanager
    def _mapped(self, action: str) -> Iterator[None]:
        with backend_errors(self.what, action):
            try:
                yield
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise BackendUnavailable(
                    f"the {self.what} at {self.cfg.address} is unreachable: {action} failed "
                    f"({type(exc).__name__}, timeout {self.cfg.timeout_seconds:g}s)",
                    backend=self.what,
                ) from None
            except hvac_exc.InvalidPath:
                raise NotFound(f"{action}: no such path in the {self.what}") from None
            except hvac_exc.VaultDown:
                raise BackendUnavailable(
                    f"the {self.what} at {self.cfg.address} is sealed or down: {action} failed",
                    backend=self.what,
                ) from None
            except hvac_exc.Forbidden:
                raise BackendUnavailable(
                    f"the {self.what} denied {action}: permission denied (the token is invalid or expired, "
                    "or its policy does not allow this)",
                    backend=self.what,
                ) from None
            except hvac_exc.Unauthorized:
                raise BackendUnavailable(
                    f"the {self.what} rejected keybroker's credentials during {action}",
                    backend=self.what,
                ) from None
            except FileNotFoundError as exc:
                raise BackendUnavailable(
                    f"the {self.what} credentials file {exc.filename} does not exist", backend=self.what
                ) from None

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` logged in; on 403 with AppRole (token expired) log in again once."""
        with self._mapped(action):
            with self._lock:
                if not self._logged_in:
                    self._login()
            try:
                return fn()
            except hvac_exc.Forbidden:
                if not isinstance(self.cfg.auth, VaultAppRoleAuth):
                    raise
                with self._lock:
                    self._login()
                return fn()

    def health(self) -> dict[str, Any]:
        """``sys/health`` without authentication; raises when sealed, uninitialized or down."""
        with self._mapped("the health check"):
            resp = self.client.adapter.get(
                "/v1/sys/health",
                params={"standbyok": "true", "perfstandbyok": "true"},
                raise_exception=False,
            )
            body: dict[str, Any] = resp if isinstance(resp, dict) else resp.json()
            if not body.get("initialized", False):
                raise BackendUnavailable(f"the {self.what} is not initialized", backend=self.what)
            if body.get("sealed", True):
                raise BackendUnavailable(f"the {self.what} is sealed", backend=self.what)
            return body


def _encode(material: KeyMaterial) -> str:
    if material.spec.algorithm == "AES":
        return base64.b64encode(material.secret).decode()
    return (
        km.load_private_key(material)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )


def _decode(text: str, where: str, field: str | None) -> KeyMaterial:
    """A PEM private key (RSA/EC) or a base64 AES key, with its real algorithm and size."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_private_key(stripped.encode(), password=None)
        except (ValueError, TypeError):
            raise InvalidInput(
                f"{where} holds a PEM that is not an unencrypted private key", field=field
            ) from None
        if isinstance(loaded, rsa.RSAPrivateKey):
            return km.import_key("RSA", None, None, stripped)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            return km.import_key("EC", None, None, stripped)
        raise InvalidInput(f"{where} holds a {type(loaded).__name__}; only RSA and EC keys", field=field)
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is neither a PEM private key nor base64", field=field) from None
    if len(raw) * 8 not in km.AES_LENGTHS:
        raise InvalidInput(f"{where} holds {len(raw)} bytes: not an AES-128/192/256 key", field=field)
    return KeyMaterial(KeySpec("AES", len(raw) * 8, None), raw, None)


class VaultKeyStore:
    name = "vault"
    external = True

    def __init__(self, cfg: VaultKeystore) -> None:
        self.cfg = cfg
        self.vault = VaultConnector(cfg, "vault")
        self._kv = self.vault.client.secrets.kv.v2

    # --- paths ---------------------------------------------------------------------------

    def _own_path(self, key_id: str) -> str:
        return f"{self.cfg.path_prefix.strip('/')}/{key_id}"

    @staticmethod
    def _split(ref: str) -> tuple[str, str]:
        path, _, field = ref.partition("#")
        return path.strip("/"), field or _FIELD

    def _read(self, ref: str, action: str) -> tuple[dict[str, Any], str, str]:
        path, field = self._split(ref)
        where = f"vault secret {self.cfg.mount}/{path}"
        resp = self.vault.call(
            action,
            lambda: self._kv.read_secret_version(
                path=path, mount_point=self.cfg.mount, raise_on_deleted_version=True
            ),
        )
        data: dict[str, Any] = resp["data"]["data"] or {}
        return data, field, where

    # --- KeyStore ------------------------------------------------------------------------

    def create(self, session: Session, key_id: str, spec: KeySpec) -> StoredKey:
        material = km.generate(spec)
        return StoredKey(spec, material.public_key_pem, self.put(session, key_id, material))

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        path = self._own_path(key_id)
        secret = {
            _FIELD: _encode(material),
            "algorithm": material.spec.algorithm,
            "key_length": material.spec.key_length,
            "curve_type": material.spec.curve_type,
            "keybroker_key_id": key_id,
        }
        self.vault.call(
            "writing the key",
            lambda: self._kv.create_or_update_secret(
                path=path, secret=secret, cas=0, mount_point=self.cfg.mount
            ),
        )
        return path

    def register(self, session: Session, key_id: str, backend_id: str) -> StoredKey:
        path, _ = self._split(backend_id)
        if not path or ".." in path.split("/"):
            raise InvalidInput(f"{backend_id!r} is not a secret path under the mount", field=_REGISTER_FIELD)
        try:
            data, field, where = self._read(backend_id, "reading the secret to register")
        except NotFound:
            raise InvalidInput(
                f"no secret at {self.cfg.mount}/{path} in vault", field=_REGISTER_FIELD
            ) from None
        if field not in data or not isinstance(data[field], str):
            raise InvalidInput(
                f"{where} has no string field {field!r} (put the PEM or base64 key there, or name the field "
                "as path#field)",
                field=_REGISTER_FIELD,
            )
        material = _decode(data[field], f"{where} field {field!r}", _REGISTER_FIELD)
        stated = data.get("algorithm")
        if isinstance(stated, str) and stated.upper() != material.spec.algorithm:
            raise InvalidInput(
                f"{where} says algorithm {stated} but holds an {material.spec.algorithm} key",
                field=_REGISTER_FIELD,
            )
        ref = path if field == _FIELD else f"{path}#{field}"
        return StoredKey(material.spec, material.public_key_pem, ref)

    def _material(self, key_id: str, backend_ref: str | None) -> KeyMaterial:
        ref = backend_ref or self._own_path(key_id)
        try:
            data, field, where = self._read(ref, "reading the key")
        except NotFound:
            raise NotFound(f"key {key_id}: its vault secret {self.cfg.mount}/{ref} is gone") from None
        value = data.get(field)
        if not isinstance(value, str):
            raise NotFound(f"key {key_id}: {where} has no field {field!r} any more")
        return _decode(value, where, None)

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        return self._material(key_id, backend_ref).secret

    @stages.timed("wrap")
    def wrap_for_transfer(
        self, session: Session, key_id: str, backend_ref: str | None, recipient: rsa.RSAPublicKey, aad: bytes
    ) -> TransferWrap:
        return software_wrap(self.fetch(session, key_id, backend_ref), recipient, aad)

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        own = self._own_path(key_id)
        if backend_ref is not None and backend_ref != own:
            log.info("key %s: registered vault secret %s left in place", key_id, backend_ref)
            return
        try:
            self.vault.call(
                "destroying the key",
                lambda: self._kv.delete_metadata_and_all_versions(path=own, mount_point=self.cfg.mount),
            )
        except NotFound:
            pass  # already gone: destroy is idempotent

    def list_refs(self) -> list[str]:
        prefix = self.cfg.path_prefix.strip("/")
        try:
            resp = self.vault.call(
                "listing keys", lambda: self._kv.list_secrets(path=prefix, mount_point=self.cfg.mount)
            )
        except NotFound:
            return []
        return sorted(f"{prefix}/{k}" for k in resp["data"]["keys"] if not k.endswith("/"))

    def health(self) -> None:
        self.vault.health()
        self.vault.call("checking the token", lambda: self.vault.client.auth.token.lookup_self())

    def check(self) -> list[CheckResult]:
        probe = f"{self.cfg.path_prefix.strip('/')}/.keybroker-check-{secrets.token_hex(4)}"
        data_path = f"{self.cfg.mount}/data/{self.cfg.path_prefix.strip('/')}/*"

        def reach() -> str:
            body = self.vault.health()
            return f"{self.cfg.address}: version {body.get('version', '?')}, unsealed"

        def login() -> str:
            info = self.vault.call("logging in", lambda: self.vault.client.auth.token.lookup_self())
            d = info.get("data", {})
            return f"{self.cfg.auth.method} auth ok; policies {', '.join(d.get('policies', []))}; ttl {d.get('ttl')}s"

        def capabilities() -> str:
            resp = self.vault.call(
                "reading capabilities",
                lambda: self.vault.client.adapter.post(
                    "/v1/sys/capabilities-self", json={"paths": [data_path]}
                ),
            )
            caps = set(resp.get(data_path, resp.get("data", {}).get(data_path, [])))
            if "root" in caps:
                return f"{data_path}: root"
            missing = {"create", "read", "delete"} - caps
            if missing:
                raise BackendUnavailable(
                    f"the token lacks {', '.join(sorted(missing))} on {data_path} (has {', '.join(sorted(caps)) or 'none'})"
                )
            return f"{data_path}: {', '.join(sorted(caps))}"

        def roundtrip() -> str:
            self.vault.call(
                "writing a probe secret",
                lambda: self._kv.create_or_update_secret(
                    path=probe, secret={"probe": "1"}, cas=0, mount_point=self.cfg.mount
                ),
            )
            self.vault.call(
                "reading the probe secret",
                lambda: self._kv.read_secret_version(path=probe, mount_point=self.cfg.mount),
            )
            self.vault.call(
                "deleting the probe secret",
                lambda: self._kv.delete_metadata_and_all_versions(path=probe, mount_point=self.cfg.mount),
            )
            return f"write, read and delete under {self.cfg.mount}/{self.cfg.path_prefix.strip('/')} work"

        return run_checks(
            [
                ("reach", reach),
                ("authenticate", login),
                ("permissions", capabilities),
                ("round trip", roundtrip),
            ]
        )
