"""PKCS#11 (HSM) key store: keys generated inside the token and released by wrapping inside it.

Objects keybroker creates carry ``CKA_ID`` = the 16 bytes of the key's UUID and ``CKA_LABEL`` =
``keybroker:<key id>``; the backend ref is ``id:<32 hex digits>``. They are token objects,
``CKA_PRIVATE``, ``CKA_SENSITIVE`` (unless ``sensitive = false``) and ``CKA_EXTRACTABLE`` (an
HSM can only wrap extractable keys; sensitive means it never reveals the value in plaintext).
Register mode takes ``id:<hex>`` or ``label:<text>`` (a bare value is a label).

Release (:meth:`Pkcs11KeyStore.wrap_for_transfer`) never brings the key's plaintext into this
process:

1. ``C_GenerateKey`` makes a fresh AES-256 *session key* as a session object in the token;
2. ``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` wraps the target key under it, inside the HSM (RFC 5649;
   private keys come out as PKCS#8 PrivateKeyInfo, AES keys raw);
3. the session key goes to the recipient with RSA-OAEP-SHA256: ``C_WrapKey(CKM_RSA_PKCS_OAEP,
   SHA-256/MGF1-SHA-256)`` under the recipient's public key imported as a session object, when the
   HSM supports those parameters. SoftHSM 2.6 only does OAEP with SHA-1, so there keybroker reads
   the *session key* (a throwaway, non-sensitive session object) and applies RSA-OAEP-SHA256 in
   software. Only that one-time session key is ever in this process, never the target key.
4. Both session objects are destroyed.

Outages: every PKCS11 error drops the session; the next call reopens it and, when the token is
gone, re-initializes the library (``C_Finalize``/``C_Initialize``), so the store recovers by itself
when the HSM comes back. All calls into the library are serialized by one lock per library.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11_exc
from pkcs11.util.ec import (
    decode_ec_private_key,
    decode_ec_public_key,
    encode_ec_public_key,
    encode_named_curve_parameters,
)
from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key
from sqlalchemy.orm import Session

from keybroker import stages
from keybroker.errors import BackendUnavailable, InvalidInput, KeybrokerError, NotFound
from keybroker.keystores import material as km
from keybroker.keystores.base import (
    OAEP_SHA256,
    CheckResult,
    StoredKey,
    TransferWrap,
    backend_errors,
    run_checks,
    trim_der_padding,
)
from keybroker.keystores.config import Pkcs11Keystore, Pkcs11Token, read_secret
from keybroker.keystores.material import KeyMaterial, KeySpec

log = logging.getLogger("keybroker.keystores.pkcs11")

_REGISTER_FIELD = "key_information.kmip_key_id"
_CURVE_OIDS = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34", "secp521r1": "1.3.132.0.35"}
_CURVES_BY_PARAMS = {encode_named_curve_parameters(oid): name for name, oid in _CURVE_OIDS.items()}
#: What an HSM must offer for this store (and ``keystore check`` looks for).
REQUIRED_MECHANISMS = {
    Mechanism.AES_KEY_GEN: "generate AES keys and session keys",
    Mechanism.AES_KEY_WRAP_PAD: "wrap keys for release inside the HSM (RFC 5649)",
    Mechanism.RSA_PKCS_KEY_PAIR_GEN: "generate RSA keys",
    Mechanism.EC_KEY_PAIR_GEN: "generate EC keys",
}


class KeyNotExtractable(KeybrokerError):
    """The key's value never leaves the HSM in plaintext; it is released by wrapping only."""

    title = "Key not extractable"
    status = 409


class _PinRejected(BackendUnavailable):
    """Not retried: every wrong attempt counts towards the token's PIN lockout."""


class _Library:
    """One loaded PKCS#11 module per path, its lock and its open sessions (process-wide)."""

    _all: ClassVar[dict[str, _Library]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = pkcs11.lib(path)
        self.lock = threading.RLock()
        self.sessions: dict[str, pkcs11.Session] = {}

    @classmethod
    def get(cls, path: str) -> _Library:
        with cls._guard:
            found = cls._all.get(path)
            if found is None:
                found = cls._all[path] = _Library(path)
            return found

    def drop_sessions(self) -> None:
        for s in self.sessions.values():
            try:
                s.close()
            except p11_exc.PKCS11Error:
                pass
        self.sessions.clear()

    def reinitialize(self) -> None:
        self.sessions.clear()  # invalid after C_Finalize anyway
        self.lib.reinitialize()


class Pkcs11Connector:
    """A logged-in session on one token, reopened after failures. Shared with the PKCS#11 seal."""

    def __init__(self, cfg: Pkcs11Token, what: str = "pkcs11") -> None:
        self.cfg = cfg
        self.what = what

    def _library(self) -> _Library:
        try:
            return _Library.get(str(self.cfg.library))
        except (OSError, RuntimeError, p11_exc.PKCS11Error) as exc:
            raise BackendUnavailable(
                f"the {self.what} module {self.cfg.library} cannot be loaded ({type(exc).__name__})",
                backend=self.what,
            ) from None

    def _open(self, lib: _Library) -> pkcs11.Session:
        try:
            token = lib.lib.get_token(token_label=self.cfg.token_label)
        except p11_exc.NoSuchToken:
            raise BackendUnavailable(
                f"the {self.what} token {self.cfg.token_label!r} is not present", backend=self.what
            ) from None
        pin = read_secret(self.cfg.pin, self.cfg.pin_file)
        try:
            return token.open(rw=True, user_pin=pin)
        except p11_exc.PinIncorrect:
            raise _PinRejected(
                f"the {self.what} token {self.cfg.token_label!r} rejected the PIN", backend=self.what
            ) from None
        except p11_exc.UserAlreadyLoggedIn:
            return token.open(rw=True)

    @contextmanager
    def session(self, action: str) -> Iterator[pkcs11.Session]:
        lib = self._library()
        with backend_errors(self.what, action), lib.lock:
            s = lib.sessions.get(self.cfg.token_label)
            if s is None:
                try:
                    s = self._open(lib)
                except _PinRejected:
                    raise
                except (BackendUnavailable, p11_exc.PKCS11Error):  # absent, removed, or not seen yet
                    log.warning("%s: token unusable, re-initializing the module", self.what)
                    lib.reinitialize()
                    s = self._open(lib)
                lib.sessions[self.cfg.token_label] = s
            try:
                yield s
            except BackendUnavailable:
                lib.drop_sessions()  # e.g. the seal key vanished with the token: look again next time
                raise
            except p11_exc.PKCS11Error as exc:
                log.warning(
                    "%s: %s failed (%s); the session will be reopened", self.what, action, type(exc).__name__
                )
                lib.drop_sessions()
                raise BackendUnavailable(
                    f"the {self.what} token {self.cfg.token_label!r} failed during {action} ({type(exc).__name__})",
                    backend=self.what,
                ) from None


def _key_id_bytes(key_id: str) -> bytes:
    return uuid.UUID(key_id).bytes


def _label(key_id: str) -> str:
    return f"keybroker:{key_id}"


def _spki_pem(der: bytes) -> str:
    return (
        serialization.load_der_public_key(der)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Pkcs11KeyStore:
    name = "pkcs11"
    external = True

    def __init__(self, cfg: Pkcs11Keystore) -> None:
        self.cfg = cfg
        self.token = Pkcs11Connector(cfg, "pkcs11")
        #: None: not probed yet. Whether the HSM does RSA-OAEP with SHA-256 in C_WrapKey.
        self._hsm_oaep_sha256: bool | None = None

    # --- templates -------------------------------------------------------------------------

    def _private_template(self, key_id: str) -> dict[Attribute, Any]:
        return {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: self.cfg.sensitive,
            Attribute.EXTRACTABLE: True,
            Attribute.ID: _key_id_bytes(key_id),
            Attribute.LABEL: _label(key_id),
        }

    def _public_template(self, key_id: str) -> dict[Attribute, Any]:
        return {Attribute.TOKEN: True, Attribute.ID: _key_id_bytes(key_id), Attribute.LABEL: _label(key_id)}

    # --- lookups ---------------------------------------------------------------------------

    @staticmethod
    def _selector(ref: str) -> dict[Attribute, Any]:
        kind, sep, value = ref.partition(":")
        if sep and kind == "id":
            try:
                return {Attribute.ID: bytes.fromhex(value)}
            except ValueError:
                raise InvalidInput(f"{ref!r}: the id is not hex", field=_REGISTER_FIELD) from None
        if sep and kind == "label":
            return {Attribute.LABEL: value}
        return {Attribute.LABEL: ref}

    def _find_key(self, s: pkcs11.Session, ref: str) -> pkcs11.Object | None:
        """The secret or private key object that ``ref`` names; None when absent."""
        sel = self._selector(ref)
        found = [
            o
            for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
            for o in s.get_objects({**sel, Attribute.CLASS: cls})
        ]
        if len(found) > 1:
            raise InvalidInput(
                f"{len(found)} key objects match {ref!r}; name one by id:<hex>", field=_REGISTER_FIELD
            )
        return found[0] if found else None

    def _public_pem(self, s: pkcs11.Session, key: pkcs11.Object, ref: str) -> tuple[KeySpec, str | None]:
        """The key's real spec (and public key) from its attributes."""
        key_type = key[Attribute.KEY_TYPE]
        if key_type == KeyType.AES:
            bits = int(key[Attribute.VALUE_LEN]) * 8
            if bits not in km.AES_LENGTHS:
                raise InvalidInput(f"{ref} is a {bits}-bit AES key", field=_REGISTER_FIELD)
            return KeySpec("AES", bits, None), None
        if key_type == KeyType.RSA:
            n = int.from_bytes(key[Attribute.MODULUS], "big")
            e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
            public = rsa.RSAPublicNumbers(e, n).public_key()
            pem = public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            km.normalize_spec("RSA", public.key_size, None)
            return KeySpec("RSA", public.key_size, None), pem
        if key_type == KeyType.EC:
            curve = _CURVES_BY_PARAMS.get(bytes(key[Attribute.EC_PARAMS]))
            if curve is None:
                raise InvalidInput(f"{ref} is on a curve keybroker does not support", field=_REGISTER_FIELD)
            spec = km.normalize_spec("EC", None, curve)
            pubs = list(
                s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key[Attribute.ID]})
            )
            if len(pubs) != 1:
                raise InvalidInput(
                    f"{ref}: EC keys need exactly one public key object with the same CKA_ID (found {len(pubs)})",
                    field=_REGISTER_FIELD,
                )
            return spec, _spki_pem(encode_ec_public_key(pubs[0]))  # type: ignore[arg-type]
        raise InvalidInput(f"{ref} is a {key_type!r} key; only AES, RSA and EC", field=_REGISTER_FIELD)

    # --- KeyStore --------------------------------------------------------------------------

    def create(self, session: Session, key_id: str, spec: KeySpec) -> StoredKey:
        with self.token.session("generating the key") as s:
            if spec.algorithm == "AES":
                s.generate_key(
                    KeyType.AES,
                    spec.key_length,
                    store=True,
                    template={
                        **self._private_template(key_id),
                        Attribute.ENCRYPT: True,
                        Attribute.DECRYPT: True,
                    },
                )
                return StoredKey(spec, None, f"id:{_key_id_bytes(key_id).hex()}")
            if spec.algorithm == "RSA":
                pub, _ = s.generate_keypair(
                    KeyType.RSA,
                    spec.key_length,
                    store=True,
                    public_template={**self._public_template(key_id), Attribute.VERIFY: True},
                    private_template={**self._private_template(key_id), Attribute.SIGN: True},
                )
                n = int.from_bytes(pub[Attribute.MODULUS], "big")
                e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
                pem = (
                    rsa.RSAPublicNumbers(e, n)
                    .public_key()
                    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                    .decode()
                )
                return StoredKey(spec, pem, f"id:{_key_id_bytes(key_id).hex()}")
            assert spec.curve_type is not None
            params = s.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_OIDS[spec.curve_type])},
                local=True,
            )
            pub, _ = params.generate_keypair(
                store=True,
                public_template={**self._public_template(key_id), Attribute.VERIFY: True},
                private_template={**self._private_template(key_id), Attribute.SIGN: True},
            )
            return StoredKey(spec, _spki_pem(encode_ec_public_key(pub)), f"id:{_key_id_bytes(key_id).hex()}")

    def put(self, session: Session, key_id: str, material: KeyMaterial) -> str | None:
        """Import: the material enters the token with C_CreateObject (the admin supplied it)."""
        spec = material.spec
        with self.token.session("importing the key") as s:
            if spec.algorithm == "AES":
                s.create_object(
                    {
                        **self._private_template(key_id),
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: material.secret,
                        Attribute.ENCRYPT: True,
                        Attribute.DECRYPT: True,
                    }
                )
            else:
                key = km.load_private_key(material)
                traditional = key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
                public = key.public_key()
                if isinstance(key, rsa.RSAPrivateKey):
                    priv_attrs = decode_rsa_private_key(traditional)
                    pub_attrs = decode_rsa_public_key(
                        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
                    )
                else:
                    priv_attrs = decode_ec_private_key(traditional)
                    pub_attrs = decode_ec_public_key(
                        public.public_bytes(
                            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                        )
                    )
                priv_attrs.update({**self._private_template(key_id), Attribute.SIGN: True})
                pub_attrs.update({**self._public_template(key_id), Attribute.VERIFY: True})
                s.create_object(priv_attrs)
                s.create_object(pub_attrs)
        return f"id:{_key_id_bytes(key_id).hex()}"

    def register(self, session: Session, key_id: str, backend_id: str) -> StoredKey:
        with self.token.session("reading the key to register") as s:
            key = self._find_key(s, backend_id)
            if key is None:
                raise InvalidInput(
                    f"no secret or private key object matches {backend_id!r} in token {self.cfg.token_label!r}",
                    field=_REGISTER_FIELD,
                )
            if not key[Attribute.EXTRACTABLE]:
                raise InvalidInput(
                    f"{backend_id} has CKA_EXTRACTABLE false: the HSM can never wrap it, so keybroker could "
                    "never release it",
                    field=_REGISTER_FIELD,
                )
            spec, pem = self._public_pem(s, key, backend_id)
            obj_id = bytes(key[Attribute.ID] or b"")
            ref = f"id:{obj_id.hex()}" if obj_id else f"label:{key[Attribute.LABEL]}"
            return StoredKey(spec, pem, ref)

    def _wrap_in_token(self, s: pkcs11.Session, key_id: str, ref: str) -> tuple[pkcs11.SecretKey, bytes]:
        key = self._find_key(s, ref)
        if key is None:
            raise NotFound(f"key {key_id}: its HSM object {ref} is gone")
        session_key = s.generate_key(
            KeyType.AES,
            256,
            store=False,
            template={
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP: True,
                Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False,
            },
        )
        wrapped = session_key.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)  # type: ignore[attr-defined]
        return session_key, wrapped

    def fetch(self, session: Session, key_id: str, backend_ref: str | None) -> bytes:
        """Only for keys made with ``sensitive = false``: wrapped in the token, unwrapped here."""
        ref = backend_ref or f"id:{_key_id_bytes(key_id).hex()}"
        with self.token.session("fetching the key") as s:
            key = self._find_key(s, ref)
            if key is not None and key[Attribute.SENSITIVE]:
                raise KeyNotExtractable(
                    f"key {key_id} is a sensitive HSM key: it leaves the HSM only wrapped for a recipient"
                )
            session_key, wrapped = self._wrap_in_token(s, key_id, ref)
            try:
                kek = bytes(session_key[Attribute.VALUE])
            finally:
                session_key.destroy()
        return trim_der_padding(aes_key_unwrap_with_padding(kek, wrapped))

    @stages.timed("wrap")
    def wrap_for_transfer(
        self, session: Session, key_id: str, backend_ref: str | None, recipient: rsa.RSAPublicKey, aad: bytes
    ) -> TransferWrap:
        ref = backend_ref or f"id:{_key_id_bytes(key_id).hex()}"
        with self.token.session("wrapping the key for transfer") as s:
            session_key, wrapped = self._wrap_in_token(s, key_id, ref)
            try:
                wrapped_session_key = self._wrap_session_key(s, session_key, recipient)
            finally:
                session_key.destroy()
        return TransferWrap(wrapped_session_key, "A256KWP", b"", wrapped)

    def _wrap_session_key(
        self, s: pkcs11.Session, session_key: pkcs11.SecretKey, recipient: rsa.RSAPublicKey
    ) -> bytes:
        if self._hsm_oaep_sha256 is not False:
            nums = recipient.public_numbers()
            pub = s.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: False,
                    Attribute.MODULUS: nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big"),
                    Attribute.PUBLIC_EXPONENT: nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"),
                    Attribute.WRAP: True,
                }
            )
            try:
                out = pub.wrap_key(  # type: ignore[attr-defined]
                    session_key,
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, None),
                )
                self._hsm_oaep_sha256 = True
                return bytes(out)
            except (p11_exc.MechanismInvalid, p11_exc.MechanismParamInvalid, p11_exc.ArgumentsBad):
                log.info(
                    "pkcs11: the HSM lacks RSA-OAEP-SHA256 wrapping; the session key is wrapped in software"
                )
                self._hsm_oaep_sha256 = False
            finally:
                pub.destroy()
        return recipient.encrypt(bytes(session_key[Attribute.VALUE]), OAEP_SHA256)

    def destroy(self, session: Session, key_id: str, backend_ref: str | None) -> None:
        own = f"id:{_key_id_bytes(key_id).hex()}"
        if backend_ref is not None and backend_ref != own:
            log.info("key %s: registered HSM object %s left in place", key_id, backend_ref)
            return
        with self.token.session("destroying the key") as s:
            for obj in list(
                s.get_objects({Attribute.ID: _key_id_bytes(key_id), Attribute.LABEL: _label(key_id)})
            ):
                obj.destroy()

    def list_refs(self) -> list[str]:
        with self.token.session("listing keys") as s:
            out = set()
            for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
                for obj in s.get_objects({Attribute.CLASS: cls}):
                    label = str(obj[Attribute.LABEL] or "")
                    if label.startswith("keybroker:"):
                        out.add(f"id:{bytes(obj[Attribute.ID]).hex()}")
            return sorted(out)

    def health(self) -> None:
        with self.token.session("the health check") as s:
            s.generate_random(64)

    def check(self) -> list[CheckResult]:
        def library() -> str:
            lib = self.token._library().lib
            return f"{self.cfg.library}: {lib.manufacturer_id.strip()} {lib.library_description.strip()}"

        def login() -> str:
            with self.token.session("logging in") as s:
                t = s.token
                return f"token {t.label!r} ({t.manufacturer_id.strip()} {t.model.strip()}), user logged in"

        def mechanisms() -> str:
            with self.token.session("listing mechanisms") as s:
                have = s.token.slot.get_mechanisms()
            missing = [f"{m.name} ({why})" for m, why in REQUIRED_MECHANISMS.items() if m not in have]
            if missing:
                raise BackendUnavailable("the token lacks " + "; ".join(missing))
            oaep = "RSA_PKCS_OAEP present" if Mechanism.RSA_PKCS_OAEP in have else "no RSA_PKCS_OAEP"
            return f"{', '.join(m.name for m in REQUIRED_MECHANISMS)} present; {oaep}"

        def roundtrip() -> str:
            probe = str(uuid.uuid4())
            self.create(None, probe, KeySpec("AES", 256, None))  # type: ignore[arg-type]
            try:
                recipient = rsa.generate_private_key(65537, 2048)
                self.wrap_for_transfer(None, probe, None, recipient.public_key(), b"")  # type: ignore[arg-type]
            finally:
                self.destroy(None, probe, None)  # type: ignore[arg-type]
            where = "in the HSM" if self._hsm_oaep_sha256 else "in software (HSM lacks OAEP-SHA256)"
            return f"generate, wrap (AES-KWP) and destroy work; session key RSA-OAEP-SHA256 {where}"

        return run_checks(
            [("module", library), ("login", login), ("mechanisms", mechanisms), ("round trip", roundtrip)]
        )
