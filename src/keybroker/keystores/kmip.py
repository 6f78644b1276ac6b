"""KMIP key store (PyKMIP client) over mutual TLS.

Operations used: Create (AES) and Create Key Pair (RSA) generate keys inside the KMIP server;
Register stores imported keys and EC keys (PyKMIP's server cannot generate EC pairs, and KMIP 1.x
servers differ here, so EC keys are generated in this process and registered); Activate makes a
new object usable; Get fetches material for wrapping; Get Attributes reads the real algorithm and
length in register mode; Locate finds objects by name; Revoke then Destroy remove what keybroker
created (an Active object cannot be destroyed).

Every object keybroker creates is named ``keybroker:<key id>`` (an RSA pair's public half
``keybroker:<key id>:public``); that name is how ``destroy`` knows an object is its own. Register
mode takes a KMIP unique identifier, or ``name:<Name>`` to locate one.

TLS is ours, not PyKMIP's: the socket is wrapped with an ``ssl.create_default_context`` pinned to
``ca_file``, TLS >= 1.2, hostname checked against ``server_name``, and keybroker's client
certificate. One connection per key-store call, with ``timeout_seconds`` on connect and reads.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kmip import enums  # type: ignore[import-untyped]
from kmip.core.messages.contents import ProtocolVersion  # type: ignore[import-untyped]
from kmip.pie import exceptions as kmip_exc  # type: ignore[import-untyped]
from kmip.pie import objects
from kmip.pie.client import ProxyKmipClient  # type: ignore[import-untyped]
from kmip.services.kmip_client import KMIPProxy  # type: ignore[import-untyped]
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
from keybroker.keystores.config import KmipKeystore
from keybroker.keystores.material import KeyMaterial, KeySpec

log = logging.getLogger("keybroker.keystores.kmip")
# PyKMIP warns on every client that no ~/.pykmip/pykmip.conf exists; we configure it in code.
logging.getLogger("kmip.core.config_helper").setLevel(logging.ERROR)
logging.getLogger("kmip.services.kmip_client").setLevel(logging.CRITICAL)
logging.getLogger("kmip.pie.client").setLevel(logging.CRITICAL)

_VERSIONS = {
    "2.0": (enums.KMIPVersion.KMIP_2_0, 2, 0),
    "1.4": (enums.KMIPVersion.KMIP_1_4, 1, 4),
    "1.3": (enums.KMIPVersion.KMIP_1_3, 1, 3),
    "1.2": (enums.KMIPVersion.KMIP_1_2, 1, 2),
}
_REGISTER_FIELD = "key_information.kmip_key_id"
_CURVE_FOR_BITS = {256: "secp256r1", 384: "secp384r1", 521: "secp521r1"}


def _name(key_id: str) -> str:
    return f"keybroker:{key_id}"


class _PinnedTLSProxy(KMIPProxy):  # type: ignore[misc]
    """PyKMIP's protocol client with keybroker's TLS context instead of its own."""

    def __init__(self, context: ssl.SSLContext, server_name: str, **kwargs: Any) -> None:
        self._kb_context = context
        self._kb_server_name = server_name
        super().__init__(**kwargs)

    def _create_socket(self, sock: socket.socket) -> None:
        sock.settimeout(self.timeout)
        self.socket = self._kb_context.wrap_socket(sock, server_hostname=self._kb_server_name)
        self.socket.settimeout(self.timeout)


def _result_reason(exc: Exception) -> Any:
    return getattr(exc, "reason", None)


def _missing(exc: Exception) -> bool:
    return (
        isinstance(exc, kmip_exc.KmipOperationFailure)
        and _result_reason(exc) == enums.ResultReason.ITEM_NOT_FOUND
    )


class KmipKeyStore:
    name = "kmip"
    external = True

    def __init__(self, cfg: KmipKeystore) -> None:
        self.cfg = cfg
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cfg.client_cert), str(cfg.client_key))
        self._context = ctx
        self._version: Any = _VERSIONS[cfg.kmip_version][0] if cfg.kmip_version else None
        self._version_lock = threading.Lock()

    # --- connection ------------------------------------------------------------------------

    def _new_client(self, version: Any) -> Any:
        client = ProxyKmipClient(hostname=self.cfg.host, port=self.cfg.port, kmip_version=version)
        client.proxy = _PinnedTLSProxy(
            self._context,
            self.cfg.server_name or self.cfg.host,
            host=self.cfg.host,
            port=self.cfg.port,
            timeout=max(1, round(self.cfg.timeout_seconds)),
            kmip_version=version,
        )
        return client

    def _negotiate(self) -> Any:
        """KMIP version: configured, or the newest both sides speak (Discover Versions)."""
        with self._version_lock:
            if self._version is not None:
                return self._version
            client = self._new_client(enums.KMIPVersion.KMIP_1_2)
            client.open()
            try:
                wanted = [ProtocolVersion(major, minor) for _, major, minor in _VERSIONS.values()]
                result = client.proxy.discover_versions(protocol_versions=wanted)
            finally:
                client.close()
            offered = [(v.major, v.minor) for v in (result.protocol_versions or [])]
            for version, major, minor in _VERSIONS.values():
                if (major, minor) in offered:
                    self._version = version
                    log.info("kmip: speaking KMIP %d.%d with %s", major, minor, self.cfg.host)
                    return version
            raise BackendUnavailable(
                f"the kmip server {self.cfg.host}:{self.cfg.port} offers none of KMIP 1.2-2.0 ({offered})",
                backend="kmip",
            )

    @contextmanager
    def _session(self, action: str) -> Iterator[Any]:
        """One connection for one key-store call; every failure becomes a keybroker error."""
        with backend_errors("kmip", action):
            try:
                client = self._new_client(self._negotiate())
                client.open()
            except (OSError, ssl.SSLError) as exc:
                raise BackendUnavailable(
                    f"the kmip server {self.cfg.host}:{self.cfg.port} is unreachable: {action} failed "
                    f"({type(exc).__name__}, timeout {self.cfg.timeout_seconds:g}s)",
                    backend="kmip",
                ) from None
            try:
                yield client
            except kmip_exc.KmipOperationFailure as exc:
                reason = _result_reason(exc)
                if reason == enums.ResultReason.ITEM_NOT_FOUND:
                    raise NotFound(f"{action}: no such object on the kmip server") from None
                if reason == enums.ResultReason.PERMISSION_DENIED:
                    raise BackendUnavailable(
                        f"the kmip server denied {action} (permission denied)", backend="kmip"
                    ) from None
                raise BackendUnavailable(
                    f"the kmip server refused {action}: {getattr(reason, 'name', reason)}", backend="kmip"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise BackendUnavailable(
                    f"the kmip server {self.cfg.host}:{self.cfg.port} failed during {action} ({type(exc).__name__})",
                    backend="kmip",
                ) from None
            finally:
                try:
                    client.close()
                except (OSError, ssl.SSLError):
                    pass

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _attrs(client: Any, uid: str, names: list[str]) -> dict[str, Any]:
        _, attrs = client.get_attributes(uid, names)
        out: dict[str, Any] = {}
        for a in attrs:
            name = a.attribute_name.value
            value = a.attribute_value
            if name == "Name":
                out.setdefault("Name", []).append(value.name_value.value)
            else:
                out[name] = getattr(value, "value", value)
        return out

    @staticmethod
    def _usage(*masks: Any) -> list[Any]:
        return list(masks)

    def _register_material(self, client: Any, key_id: str, material: KeyMaterial) -> str:
        spec = material.spec
        obj: Any
        if spec.algorithm == "AES":
            obj = objects.SymmetricKey(
                enums.CryptographicAlgorithm.AES,
                spec.key_length,
                material.secret,
                masks=self._usage(
                    enums.CryptographicUsageMask.ENCRYPT,
                    enums.CryptographicUsageMask.DECRYPT,
                    enums.CryptographicUsageMask.WRAP_KEY,
                    enums.CryptographicUsageMask.UNWRAP_KEY,
                ),
                name=_name(key_id),
            )
        else:
            alg = (
                enums.CryptographicAlgorithm.RSA
                if spec.algorithm == "RSA"
                else enums.CryptographicAlgorithm.EC
            )
            obj = objects.PrivateKey(
                alg,
                spec.key_length,
                material.secret,
                enums.KeyFormatType.PKCS_8,
                masks=self._usage(enums.CryptographicUsageMask.SIGN, enums.CryptographicUsageMask.DECRYPT),
                name=_name(key_id),
            )
        uid = str(client.register(obj))
        client.activate(uid)
        return uid

    @staticmethod
    def _material_of(obj: Any, where: str) -> KeyMaterial:
        """Material of a fetched object, with its real algorithm and size."""
        if isinstance(obj, objects.SymmetricKey):
            if obj.cryptographic_algorithm != enums.CryptographicAlgorithm.AES:
                raise InvalidInput(
                    f"{where} is a {obj.cryptographic_algorithm.name} key, not AES", field=_REGISTER_FIELD
                )
            raw = bytes(obj.value)
            if len(raw) * 8 not in km.AES_LENGTHS:
                raise InvalidInput(f"{where} is a {len(raw) * 8}-bit AES key", field=_REGISTER_FIELD)
            return KeyMaterial(KeySpec("AES", len(raw) * 8, None), raw, None)
        if isinstance(obj, objects.PrivateKey):
            try:
                key = serialization.load_der_private_key(bytes(obj.value), password=None)
            except ValueError:
                raise InvalidInput(
                    f"{where} is a private key in {obj.key_format_type.name} that keybroker cannot read",
                    field=_REGISTER_FIELD,
                ) from None
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
            if isinstance(key, rsa.RSAPrivateKey):
                return km.import_key("RSA", None, None, pem)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return km.import_key("EC", None, None, pem)
            raise InvalidInput(f"{where} is a {type(key).__name__}; only RSA and EC", field=_REGISTER_FIELD)
        raise InvalidInput(
            f"{where} is a {type(obj).__name__}; register a symmetric or private key", field=_REGISTER_FIELD
        )

    # --- KeyStore --------------------------------------------------------------------------

    def create(self, session: Session, key_id: str, spec: KeySpec) -> StoredKey:
        if spec.algorithm == "EC":
            material = km.generate(spec)
            return StoredKey(spec, material.public_key_pem, self.put(session, key_id, material))
        with self._session("creating the key") as c:
            if spec.algorithm == "AES":
                uid = str(
                    c.create(
                        enums.CryptographicAlgorithm.AES,
                        spec.key_length,
                        name=_name(key_id),
                        cryptographic_usage_mask=self._usage(
                            enums.CryptographicUsageMask.ENCRYPT,
                            enums.CryptographicUsageMask.DECRYPT,
                            enums.CryptographicUsageMask.WRAP_KEY,
                            enums.CryptographicUsageMask.UNWRAP_KEY,
                        ),
                    )
                )
                c.activate(uid)
                return StoredKey(spec, None, uid)
            pub_uid, priv_uid = c.create_key_pair(
                enums.CryptographicAlgorithm.RSA,
                spec.key_length,
                public_name=_name(key_id) + ":public",
                private_name=_name(key_id),
                public_usage_mask=[enums.CryptographicUsageMask.VERIFY, enums.CryptographicUsageMask.ENCRYPT],
                private_usage_mask=[enums.CryptographicUsageMask.SIGN, enums.CryptographicUsageMask.DECRYPT],
            )
            c.activate(str(priv_uid))
            c.activate(str(pub_uid))
            pub = c.get(str(pub_uid))
            public = serialization.load_der_public_key(bytes(pub.value))
            pem = public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            return StoredKey(spec, pem, str(priv_uid))

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        with self._session("registering the key") as c:
            return self._register_material(c, key_id, material)

    def register(self, session: Session, key_id: str, backend_id: str) -> StoredKey:
        with self._session("reading the key to register") as c:
            uid = backend_id
            if backend_id.startswith("name:"):
                found = [str(u) for u in c.locate(attributes=[_name_attr(backend_id[5:])])]
                if len(found) != 1:
                    raise InvalidInput(
                        f"{len(found)} kmip objects are named {backend_id[5:]!r}; register by unique identifier",
                        field=_REGISTER_FIELD,
                    )
                uid = found[0]
            try:
                attrs = self._attrs(
                    c, uid, ["Object Type", "Cryptographic Algorithm", "Cryptographic Length", "State"]
                )
                obj = c.get(uid)
            except kmip_exc.KmipOperationFailure as exc:
                if not _missing(exc):
                    raise
                raise InvalidInput(
                    f"no kmip object with unique identifier {uid!r}", field=_REGISTER_FIELD
                ) from None
            material = self._material_of(obj, f"kmip object {uid}")
            stated = attrs.get("Cryptographic Length")
            if (
                isinstance(stated, int)
                and material.spec.key_length is not None
                and stated != material.spec.key_length
            ):
                raise InvalidInput(
                    f"kmip object {uid} says {stated} bits but holds a {material.spec.key_length}-bit key",
                    field=_REGISTER_FIELD,
                )
            return StoredKey(material.spec, material.public_key_pem, uid)

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        if backend_ref is None:
            raise NotFound(f"key {key_id} has no kmip object")
        with self._session("fetching the key") as c:
            try:
                obj = c.get(backend_ref)
            except kmip_exc.KmipOperationFailure as exc:
                if not _missing(exc):
                    raise
                raise NotFound(f"key {key_id}: kmip object {backend_ref} is gone") from None
        return self._material_of(obj, f"kmip object {backend_ref}").secret

    @stages.timed("wrap")
    def wrap_for_transfer(
        self, session: Session, key_id: str, backend_ref: str | None, recipient: rsa.RSAPublicKey, aad: bytes
    ) -> TransferWrap:
        return software_wrap(self.fetch(session, key_id, backend_ref), recipient, aad)

    def _retire(self, c: Any, uid: str) -> None:
        try:
            c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        except kmip_exc.KmipOperationFailure as exc:
            if _missing(exc):
                return
            # not active (pre-active or already revoked): destroy anyway
        c.destroy(uid)

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        if backend_ref is None:
            return
        with self._session("destroying the key") as c:
            try:
                names = self._attrs(c, backend_ref, ["Name"]).get("Name", [])
            except kmip_exc.KmipOperationFailure as exc:
                if not _missing(exc):
                    raise
                return  # already gone: destroy is idempotent
            if _name(key_id) not in names:
                log.info("key %s: registered kmip object %s left in place", key_id, backend_ref)
                return
            self._retire(c, backend_ref)
            for pub in c.locate(attributes=[_name_attr(_name(key_id) + ":public")]):
                self._retire(c, str(pub))

    def list_refs(self) -> list[str]:
        with self._session("listing keys") as c:
            out = []
            for uid in c.locate(maximum_items=1000):
                names = self._attrs(c, str(uid), ["Name"]).get("Name", [])
                if any(n.startswith("keybroker:") and not n.endswith(":public") for n in names):
                    out.append(str(uid))
            return sorted(out)

    def health(self) -> None:
        with self._session("the health check") as c:
            c.locate(maximum_items=1)

    def check(self) -> list[CheckResult]:
        def reach() -> str:
            with socket.create_connection((self.cfg.host, self.cfg.port), timeout=self.cfg.timeout_seconds):
                return f"{self.cfg.host}:{self.cfg.port} accepts TCP connections"

        def tls() -> str:
            with socket.create_connection(
                (self.cfg.host, self.cfg.port), timeout=self.cfg.timeout_seconds
            ) as raw:
                try:
                    with self._context.wrap_socket(
                        raw, server_hostname=self.cfg.server_name or self.cfg.host
                    ) as s:
                        return f"{s.version()} with a client certificate; server certificate verified"
                except ssl.SSLCertVerificationError as exc:
                    raise BackendUnavailable(
                        f"the server certificate does not verify: {exc.verify_message}"
                    ) from None

        def version() -> str:
            v = self._negotiate()
            return f"KMIP {v.name.removeprefix('KMIP_').replace('_', '.')}"

        def roundtrip() -> str:
            probe = "check-" + threading.current_thread().name
            with self._session("creating a probe key") as c:
                uid = str(
                    c.create(
                        enums.CryptographicAlgorithm.AES,
                        128,
                        name=_name(probe),
                        cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT],
                    )
                )
                c.activate(uid)
                c.get(uid)
                self._retire(c, uid)
            return "create, activate, get, revoke and destroy work"

        return run_checks(
            [("reach", reach), ("mutual TLS", tls), ("protocol", version), ("round trip", roundtrip)]
        )


def _name_attr(value: str) -> Any:
    from kmip.core.factories.attributes import AttributeFactory  # type: ignore[import-untyped]

    return AttributeFactory().create_attribute(enums.AttributeType.NAME, value)
