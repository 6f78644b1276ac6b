"""Putting a released private key into a PKCS#11 token as a non-extractable object.

The private key object is a token object with ``CKA_PRIVATE`` (login needed), ``CKA_SENSITIVE``
(its value is never revealed) and ``CKA_EXTRACTABLE`` false (it cannot even be wrapped out), usable
to sign (and, for RSA, decrypt: TLS 1.2 RSA key exchange); the matching public key object carries the
same ``CKA_LABEL`` and ``CKA_ID``. An imported key is, by PKCS#11's definition, neither
``CKA_ALWAYS_SENSITIVE`` nor ``CKA_NEVER_EXTRACTABLE``: it existed outside the token, inside the TEE,
between the unwrap and this import.

Idempotent: the same label (and id) already holding the same public key is left alone; a different
key there is an error unless ``replace``. :func:`inspect_target` makes the same decision from the
key's public half alone, before the key is released: a wrong PIN, a missing token, a conflicting
object or a key already in place then cost no release. The result is named by an RFC 7512 PKCS#11 URI,
``pkcs11:token=...;id=...;object=...;type=private``, which nginx's pkcs11 engine and OpenSSL's
pkcs11-provider take as is.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, unquote_to_bytes

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.client.errors import TokenError
from keybroker.errors import InvalidInput

log = logging.getLogger("keybroker.client")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# --- RFC 7512 URIs --------------------------------------------------------------------------------------

_PATH_ATTRS = ("token", "id", "object", "type")
#: Characters RFC 7512 allows unescaped in a path attribute value (pk11-pchar without ";" and "=").
_SAFE = "-._~:[]@!$'()*+,&"


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    object: str
    id: bytes | None = None
    type: str = "private"
    module_path: Path | None = None
    pin_source: Path | None = None
    pin_value: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return format_uri(self.token, self.object, self.id)


def format_uri(token: str, label: str, obj_id: bytes | None, type_: str = "private") -> str:
    parts = [f"token={quote(token, safe=_SAFE)}"]
    if obj_id:
        parts.append("id=" + "".join(f"%{b:02X}" for b in obj_id))
    parts += [f"object={quote(label, safe=_SAFE)}", f"type={type_}"]
    return "pkcs11:" + ";".join(parts)


def parse_uri(text: str) -> Pkcs11Uri:
    """A ``pkcs11:`` URI naming one private key: ``token`` and ``object`` required, ``id`` optional;
    query attributes ``module-path``, ``pin-source`` (a file) and ``pin-value``."""
    text = text.strip()
    if not text.startswith("pkcs11:"):
        raise InvalidInput(f"{text[:40]!r} is not a pkcs11: URI", field="uri")
    path, _, query = text[len("pkcs11:") :].partition("?")
    attrs: dict[str, str] = {}
    raw_id: bytes | None = None
    for part in filter(None, path.split(";")):
        name, eq, value = part.partition("=")
        if not eq or name not in _PATH_ATTRS:
            raise InvalidInput(
                f"PKCS#11 URI attribute {name!r} is not supported (use {', '.join(_PATH_ATTRS)})", field="uri"
            )
        if name in attrs or (name == "id" and raw_id is not None):
            raise InvalidInput(f"PKCS#11 URI attribute {name!r} appears twice", field="uri")
        if name == "id":
            raw_id = unquote_to_bytes(value)
            attrs[name] = value
        else:
            attrs[name] = unquote(value, errors="strict")
    query_attrs: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, eq, value = part.partition("=")
        if not eq or name not in ("module-path", "pin-source", "pin-value"):
            raise InvalidInput(
                f"PKCS#11 URI query attribute {name!r} is not supported (module-path, pin-source, pin-value)",
                field="uri",
            )
        query_attrs[name] = unquote(value)
    for required in ("token", "object"):
        if not attrs.get(required):
            raise InvalidInput(f"the PKCS#11 URI needs {required}=...", field="uri")
    if attrs.get("type", "private") != "private":
        raise InvalidInput("the PKCS#11 URI must name a private key (type=private)", field="uri")
    pin_source = query_attrs.get("pin-source")
    return Pkcs11Uri(
        token=attrs["token"],
        object=attrs["object"],
        id=raw_id or None,
        module_path=Path(query_attrs["module-path"]) if "module-path" in query_attrs else None,
        pin_source=Path(pin_source.removeprefix("file:")) if pin_source else None,
        pin_value=query_attrs.get("pin-value"),
    )


# --- provisioning file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionEntry:
    line: int
    uri: Pkcs11Uri
    key_id: str


def parse_keys_file(text: str, source: str = "keys file") -> list[ProvisionEntry]:
    """The seed's ``keys.txt``: one ``<pkcs11 URI> <key id>`` per line; ``#`` comments, blank lines."""
    entries: list[ProvisionEntry] = []
    seen: set[tuple[str, str]] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()  # "#" never appears unescaped in a pkcs11: URI
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise InvalidInput(
                f"{source}:{number}: expected '<pkcs11 URI> <key id>', got {len(fields)} fields",
                field="config",
            )
        try:
            uri = parse_uri(fields[0])
        except InvalidInput as exc:
            raise InvalidInput(f"{source}:{number}: {exc.detail}", field="config") from None
        try:
            key_id = str(uuid.UUID(fields[1]))
        except ValueError:
            raise InvalidInput(
                f"{source}:{number}: {fields[1]!r} is not a key id (UUID)", field="config"
            ) from None
        slot = (uri.token, uri.object)
        if slot in seen:
            raise InvalidInput(
                f"{source}:{number}: token {uri.token!r} object {uri.object!r} is listed twice",
                field="config",
            )
        seen.add(slot)
        entries.append(ProvisionEntry(number, uri, key_id))
    if not entries:
        raise InvalidInput(f"{source} lists no keys", field="config")
    return entries


# --- import ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenTarget:
    module: Path
    token_label: str
    pin: str = field(repr=False)
    label: str
    #: CKA_ID; None: the key's Subject Key Identifier (SHA-1 of the public key, as in its certificate).
    id: bytes | None = None


@dataclass(frozen=True)
class ImportResult:
    uri: str
    action: Literal["imported", "unchanged", "replaced"]


def read_pin(pin: str | None, pin_file: Path | None) -> str:
    if pin is not None and pin_file is not None:
        raise InvalidInput("give --pin or --pin-file, not both", field="pin")
    if pin_file is not None:
        try:
            value = pin_file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the PIN file {pin_file}: {exc.strerror}", field="pin_file"
            ) from None
        if not value:
            raise InvalidInput(f"the PIN file {pin_file} is empty", field="pin_file")
        return value
    if pin is None or not pin:
        raise InvalidInput("the token needs a PIN: --pin-file FILE (or --pin)", field="pin")
    return pin


def default_id(key: PrivateKey | PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    return x509.SubjectKeyIdentifier.from_public_key(public).digest


def load_public_key(spki_der: bytes) -> PublicKey:
    """The DER SubjectPublicKeyInfo the broker's challenge names, as an RSA or EC public key."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except ValueError:
        raise InvalidInput(
            "the key's public half is not a DER SubjectPublicKeyInfo", field="public_key"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidInput("only RSA and EC private keys go into a token", field="public_key")
    return key


#: One loaded module per path and process: a module is initialized once (C_Initialize), and a
#: second python-pkcs11 ``lib`` for the same module would fail with CKR_CRYPTOKI_ALREADY_INITIALIZED.
_LIBS: dict[str, Any] = {}


@contextmanager
def _session(target: TokenTarget) -> Iterator[Any]:
    import pkcs11
    from pkcs11 import exceptions as p11

    try:
        lib = _LIBS.get(str(target.module)) or _LIBS.setdefault(
            str(target.module), pkcs11.lib(str(target.module))
        )
    except (OSError, RuntimeError, p11.PKCS11Error) as exc:
        raise TokenError(f"cannot load the PKCS#11 module {target.module}: {exc}") from None
    try:
        token = lib.get_token(token_label=target.token_label)
    except p11.NoSuchToken:
        raise TokenError(f"no token labelled {target.token_label!r} in {target.module}") from None
    except p11.MultipleTokensReturned:
        raise TokenError(f"several tokens are labelled {target.token_label!r} in {target.module}") from None
    try:
        session = token.open(rw=True, user_pin=target.pin)
    except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
        raise TokenError(f"token {target.token_label!r} rejected the PIN") from None
    except p11.PinLocked:
        raise TokenError(f"token {target.token_label!r}: the user PIN is locked") from None
    except p11.PKCS11Error as exc:
        raise TokenError(f"cannot open token {target.token_label!r}: {type(exc).__name__}") from None
    try:
        yield session
    except p11.PKCS11Error as exc:
        raise TokenError(f"token {target.token_label!r}: {type(exc).__name__}") from None
    finally:
        try:
            session.close()
        except p11.PKCS11Error:
            pass


def _public_numbers_match(session: Any, obj: Any, key: PublicKey) -> bool:
    """Whether token private-key object ``obj`` (and its public twin) holds public key ``key``."""
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import decode_ec_public_key

    if isinstance(key, rsa.RSAPublicKey):
        if obj[Attribute.KEY_TYPE] != KeyType.RSA:
            return False
        nums = key.public_numbers()
        return (
            int.from_bytes(obj[Attribute.MODULUS], "big") == nums.n
            and int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big") == nums.e
        )
    if obj[Attribute.KEY_TYPE] != KeyType.EC:
        return False
    want = decode_ec_public_key(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if bytes(obj[Attribute.EC_PARAMS]) != want[Attribute.EC_PARAMS]:
        return False
    twins = list(  # exhaust the search: one find operation per session at a time
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: bytes(obj[Attribute.ID] or b"")}
        )
    )
    return any(bytes(t[Attribute.EC_POINT]) == want[Attribute.EC_POINT] for t in twins)


def _templates(key: PrivateKey, label: str, obj_id: bytes) -> tuple[dict[Any, Any], dict[Any, Any]]:
    from pkcs11 import Attribute
    from pkcs11.util.ec import decode_ec_private_key, decode_ec_public_key
    from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key

    traditional = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    if isinstance(key, rsa.RSAPrivateKey):
        priv = decode_rsa_private_key(traditional)
        pub = decode_rsa_public_key(
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        )
        priv[Attribute.DECRYPT] = True
        pub[Attribute.ENCRYPT] = True
    else:
        priv = decode_ec_private_key(traditional)
        pub = decode_ec_public_key(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        priv[Attribute.DERIVE] = False
    common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: obj_id}
    priv.update(
        {
            **common,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.UNWRAP: False,
        }
    )
    pub.update({**common, Attribute.PRIVATE: False, Attribute.VERIFY: True, Attribute.WRAP: False})
    return priv, pub


def _examine(
    s: Any, target: TokenTarget, public: PublicKey, replace: bool
) -> tuple[dict[Any, Any], ImportResult | None]:
    """The private-key objects under the target's label or id, and an "unchanged" result when they are
    exactly this key (sensitive, non-extractable); :class:`TokenError` for another one unless ``replace``."""
    from pkcs11 import Attribute, ObjectClass

    obj_id = target.id or default_id(public)
    by_label = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: target.label}))
    by_id = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: obj_id}))
    found = {o.handle: o for o in by_label + by_id}
    if len(found) == 1:
        obj = next(iter(found.values()))
        label, existing_id = obj[Attribute.LABEL], bytes(obj[Attribute.ID] or b"")
        same = (
            label == target.label
            and (target.id is None or existing_id == target.id)
            and _public_numbers_match(s, obj, public)
            and bool(obj[Attribute.SENSITIVE])
            and not bool(obj[Attribute.EXTRACTABLE])
        )
        if same:
            return found, ImportResult(format_uri(target.token_label, label, existing_id), "unchanged")
    if found and not replace:
        names = ", ".join(
            sorted(
                f"label {o[Attribute.LABEL]!r} id {bytes(o[Attribute.ID] or b'').hex() or '-'}"
                for o in found.values()
            )
        )
        raise TokenError(
            f"token {target.token_label!r} already holds a conflicting private key under {names} "
            "(another key, another CKA_ID, or not sensitive and non-extractable); --replace overwrites it"
        )
    return found, None


def inspect_target(
    target: TokenTarget, public: PublicKey | None, *, replace: bool = False
) -> ImportResult | None:
    """Before a release: the module loads, the token is there and takes the PIN, and (given the key's
    public half) the key is already in place (an "unchanged" result), or its label and id are free or
    ``replace`` is set (None); :class:`TokenError` otherwise."""
    with _session(target) as s:
        if public is None:
            return None
        return _examine(s, target, public, replace)[1]


def import_private_key(target: TokenTarget, key: PrivateKey, *, replace: bool = False) -> ImportResult:
    """Import ``key`` (see the module docstring for the object attributes and idempotence)."""
    from pkcs11 import Attribute, ObjectClass

    obj_id = target.id or default_id(key)
    with _session(target) as s:
        found, unchanged = _examine(s, target, key.public_key(), replace)
        if unchanged is not None:
            return unchanged
        stale = dict(found)
        for template in ({Attribute.LABEL: target.label}, {Attribute.ID: obj_id}):
            stale.update(
                {o.handle: o for o in s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **template})}
            )
        for obj in stale.values():
            obj.destroy()
        priv_template, pub_template = _templates(key, target.label, obj_id)
        created = s.create_object(priv_template)
        priv_template.clear()
        complete = False
        try:
            s.create_object(pub_template)
            if created[Attribute.EXTRACTABLE] or not created[Attribute.SENSITIVE]:
                raise TokenError(
                    f"token {target.token_label!r} did not keep the key sensitive and non-extractable"
                )
            complete = True
        finally:
            if not complete:
                created.destroy()
        action: Literal["imported", "replaced"] = "replaced" if found else "imported"
        log.info("%s %s into token %s", action, target.label, target.token_label)
        return ImportResult(format_uri(target.token_label, target.label, obj_id), action)


def list_objects(target: TokenTarget) -> list[dict[str, Any]]:
    """Label, id, class and the protection attributes of every key object (for checks and tests)."""
    from pkcs11 import Attribute, ObjectClass

    out: list[dict[str, Any]] = []
    with _session(target) as s:
        for cls, name in ((ObjectClass.PRIVATE_KEY, "private"), (ObjectClass.PUBLIC_KEY, "public")):
            for o in s.get_objects({Attribute.CLASS: cls}):
                row: dict[str, Any] = {
                    "class": name,
                    "label": o[Attribute.LABEL],
                    "id": bytes(o[Attribute.ID] or b"").hex(),
                }
                if name == "private":
                    for attr in ("PRIVATE", "SENSITIVE", "EXTRACTABLE", "SIGN"):
                        row[attr.lower()] = bool(o[getattr(Attribute, attr)])
                out.append(row)
    return out
