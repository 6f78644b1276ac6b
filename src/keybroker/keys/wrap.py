"""Wrapping a released key so that only the attested workload can open it (the broker side). Pure.

- ``/kbs/v1`` (Intel SecL / Trust Authority KBS): :func:`secl_from_transfer` lays a key store's
  :class:`~keybroker.wire.envelope.TransferWrap` out in the SecL format (see ``envelope``).
- ``/kbs/v0`` (KBS protocol): a flattened JWE, ``RSA-OAEP-256`` or ``ECDH-ES+A256KW`` with
  ``A256GCM``; the AAD is the ASCII of the protected header's base64url (RFC 7516 5.1 step 14).

The workload side (opening both) is :mod:`keybroker.client.unwrap`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey

from keybroker.errors import InvalidInput
from keybroker.wire.envelope import TransferWrap, secl_wrapped_key, software_wrap


@dataclass(frozen=True)
class SeclWrapped:
    wrapped_key: bytes
    wrapped_swk: bytes


def secl_from_transfer(tw: TransferWrap) -> SeclWrapped:
    """``{"wrapped_key", "wrapped_swk"}`` of a ``/kbs/v1`` transfer response."""
    return SeclWrapped(secl_wrapped_key(tw), tw.wrapped_session_key)


def secl_wrap(secret: bytes, workload_key: rsa.RSAPublicKey) -> SeclWrapped:
    """Wrap ``secret`` in this process (tests and mock brokers; the broker goes through its key store)."""
    return secl_from_transfer(software_wrap(secret, workload_key, b""))


def jwe_wrap(secret: bytes, tee_pubkey: dict[str, object] | RSAKey | ECKey) -> dict[str, str]:
    """Flattened JWE of ``secret`` to the workload's key, a JWK or one imported already (RSA:
    RSA-OAEP-256; EC: ECDH-ES+A256KW)."""
    key: RSAKey | ECKey
    if isinstance(tee_pubkey, RSAKey | ECKey):
        key = tee_pubkey
    elif tee_pubkey.get("kty") == "RSA":
        key = RSAKey.import_key(tee_pubkey)  # type: ignore[arg-type]
    elif tee_pubkey.get("kty") == "EC":
        key = ECKey.import_key(tee_pubkey)  # type: ignore[arg-type]
    else:
        raise InvalidInput(
            f"tee-pubkey kty {tee_pubkey.get('kty')!r} is not RSA or EC", field="runtime-data.tee-pubkey"
        )
    alg = "RSA-OAEP-256" if isinstance(key, RSAKey) else "ECDH-ES+A256KW"
    if key.is_private:
        raise InvalidInput(
            "tee-pubkey holds a private key; send the public part only", field="runtime-data.tee-pubkey"
        )
    compact = jwe.encrypt_compact({"alg": alg, "enc": "A256GCM"}, secret, key, algorithms=[alg, "A256GCM"])
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    return {
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }


def public_jwk(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, object]:
    imported: RSAKey | ECKey = (
        RSAKey.import_key(key) if isinstance(key, rsa.RSAPublicKey) else ECKey.import_key(key)
    )
    return dict(imported.as_dict(private=False))
