"""Child process for test_pkcs11_import.py: import scenarios on a SoftHSM2 token, results as JSON.

Usage: pkcs11_driver.py MODULE TOKEN_LABEL PIN (SOFTHSM2_CONF set by the caller).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.client.errors import TokenError
from keybroker.client.pkcs11_import import (
    TokenTarget,
    _session,
    import_private_key,
    inspect_target,
    list_objects,
)


def main(module: Path, label: str, pin: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label}
    web = TokenTarget(module, label, pin, "WEB")
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    free = inspect_target(web, k1.public_key())
    first = import_private_key(web, k1)
    held = inspect_target(web, k1.public_key())
    again = import_private_key(web, k1)
    out["inspect"] = {"free": free, "held": held and [held.uri, held.action]}
    try:
        inspect_target(web, k2.public_key())
    except TokenError as exc:
        out["inspect"]["other"] = exc.detail
    out["inspect"]["other_replace"] = inspect_target(web, k2.public_key(), replace=True)
    out["inspect"]["access_only"] = inspect_target(web, None)
    out["first"] = {"uri": first.uri, "action": first.action}
    out["again"] = {"uri": again.uri, "action": again.action}
    try:
        import_private_key(web, k2)
    except TokenError as exc:
        out["conflict"] = exc.detail
    out["replaced"] = {"action": import_private_key(web, k2, replace=True).action}
    try:  # the same key, asked for under another CKA_ID
        import_private_key(TokenTarget(module, label, pin, "WEB", b"\x99"), k2)
    except TokenError as exc:
        out["other_id"] = exc.detail
    eck = ec.generate_private_key(ec.SECP256R1())
    ec_target = TokenTarget(module, label, pin, "EC", bytes.fromhex("0a0b"))
    out["ec"] = [import_private_key(ec_target, eck).action, import_private_key(ec_target, eck).action]
    out["objects"] = list_objects(web)

    from pkcs11 import Attribute, ObjectClass
    from pkcs11 import exceptions as p11

    with _session(web) as s:
        priv = next(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "WEB"}))
        out["web_matches_second_key"] = (
            int.from_bytes(priv[Attribute.MODULUS], "big") == k2.public_key().public_numbers().n
        )
        try:
            priv[Attribute.PRIVATE_EXPONENT]
            out["read_private_exponent"] = "readable"
        except p11.PKCS11Error as exc:
            out["read_private_exponent"] = type(exc).__name__
    for name, target in (
        ("bad_pin", TokenTarget(module, label, "0000", "X")),
        ("no_token", TokenTarget(module, "no-such-token", pin, "X")),
    ):
        try:
            inspect_target(target, None)
        except TokenError as exc:
            out["inspect_" + name] = exc.detail
    try:
        import_private_key(TokenTarget(module, label, "0000", "X"), k1)
    except TokenError as exc:
        out["bad_pin"] = exc.detail
    try:
        import_private_key(TokenTarget(module, "no-such-token", pin, "X"), k1)
    except TokenError as exc:
        out["no_token"] = exc.detail
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])))
