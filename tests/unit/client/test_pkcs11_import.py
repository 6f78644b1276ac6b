"""PKCS#11 URIs, the keys file, and importing into a real SoftHSM2 token.

The token scenarios run in one child process (``pkcs11_driver.py``): a PKCS#11 module is initialized
once per process, and the key-store tests may already hold SoftHSM in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import softhsm

from keybroker.client.pkcs11_import import format_uri, parse_keys_file, parse_uri
from keybroker.errors import InvalidInput

KEY_ID = str(uuid.uuid4())


def test_uri_format_and_parse_round_trip() -> None:
    uri = format_uri("KMS", "RSA KEY;1", b"\x01\xab")
    assert uri == "pkcs11:token=KMS;id=%01%AB;object=RSA%20KEY%3B1;type=private"
    parsed = parse_uri(uri + "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin")
    assert (parsed.token, parsed.object, parsed.id, parsed.type) == (
        "KMS",
        "RSA KEY;1",
        b"\x01\xab",
        "private",
    )
    assert parsed.module_path == Path("/usr/lib/softhsm/libsofthsm2.so") and parsed.pin_source == Path(
        "/etc/pin"
    )
    assert str(parsed) == uri
    assert parse_uri("pkcs11:token=KMS;object=RSAKEY").id is None


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("file:/x", "not a pkcs11: URI"),
        ("pkcs11:token=KMS", "needs object"),
        ("pkcs11:object=K", "needs token"),
        ("pkcs11:token=KMS;object=K;type=cert", "type=private"),
        ("pkcs11:token=KMS;object=K;slot-id=3", "'slot-id' is not supported"),
        ("pkcs11:token=KMS;token=B;object=K", "appears twice"),
        ("pkcs11:token=KMS;object=K?pin=1", "query attribute 'pin'"),
    ],
)
def test_uri_errors(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_uri(uri)


def test_keys_file() -> None:
    text = f"""# the seed's keys.txt
pkcs11:token=KMS;id=%01%02;object=RSAKEY;type=private {KEY_ID}   # nginx

pkcs11:token=KMS;object=ECKEY?pin-source=/run/pin {KEY_ID.upper()}
"""
    entries = parse_keys_file(text)
    assert [(e.line, e.uri.object, e.uri.id, e.key_id) for e in entries] == [
        (2, "RSAKEY", b"\x01\x02", KEY_ID),
        (4, "ECKEY", None, KEY_ID),
    ]
    assert entries[1].uri.pin_source == Path("/run/pin")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("# nothing\n", "lists no keys"),
        ("pkcs11:token=KMS;object=A\n", "expected '<pkcs11 URI> <key id>', got 1 fields"),
        ("pkcs11:token=KMS;object=A not-a-uuid\n", "'not-a-uuid' is not a key id"),
        (f"pkcs11:object=A {KEY_ID}\n", "keys file:1: the PKCS#11 URI needs token"),
        (f"pkcs11:token=K;object=A {KEY_ID}\npkcs11:token=K;object=A;id=%01 {KEY_ID}\n", "listed twice"),
    ],
    ids=["no keys", "one field", "not a uuid", "no token", "listed twice"],  # KEY_ID is random
)
def test_keys_file_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        parse_keys_file(text)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if softhsm.library() is None:
        pytest.skip("softhsm2 is not installed (make test installs it when run as root)")
    label = "client-" + uuid.uuid4().hex[:8]
    hsm = softhsm.make(tmp_path_factory.mktemp("client-hsm"), label)
    driver = Path(__file__).with_name("pkcs11_driver.py")
    proc = subprocess.run(
        [sys.executable, str(driver), str(hsm.library), label, softhsm.USER_PIN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_import_rsa_is_idempotent_and_conflicts_need_replace(token_run: dict[str, Any]) -> None:
    r = token_run
    assert r["first"]["action"] == "imported" and r["again"]["action"] == "unchanged"
    assert r["first"]["uri"] == r["again"]["uri"]
    assert r["first"]["uri"].startswith(f"pkcs11:token={r['label']};id=%") and r["first"]["uri"].endswith(
        ";object=WEB;type=private"
    )
    assert "already holds a conflicting private key under label 'WEB'" in r["conflict"]
    assert "--replace" in r["conflict"]
    assert r["replaced"]["action"] == "replaced"
    assert r["other_id"].startswith("token") and "--replace" in r["other_id"]


def test_imported_objects_are_private_sensitive_non_extractable(token_run: dict[str, Any]) -> None:
    objects = token_run["objects"]
    privates = [o for o in objects if o["class"] == "private"]
    publics = [o for o in objects if o["class"] == "public"]
    assert sorted(o["label"] for o in privates) == ["EC", "WEB"] == sorted(o["label"] for o in publics)
    for o in privates:
        assert (o["private"], o["sensitive"], o["extractable"], o["sign"]) == (True, True, False, True)
    assert {o["id"] for o in privates} == {o["id"] for o in publics}
    assert next(o for o in privates if o["label"] == "EC")["id"] == "0a0b"
    # the token refuses to reveal the value
    assert token_run["read_private_exponent"] == "AttributeSensitive"
    assert token_run["ec"] == ["imported", "unchanged"]
    # the replaced key is the one in the token now
    assert token_run["web_matches_second_key"] is True


def test_token_errors(token_run: dict[str, Any]) -> None:
    assert "rejected the PIN" in token_run["bad_pin"]
    assert "no token labelled 'no-such-token'" in token_run["no_token"]
    assert "rejected the PIN" in token_run["inspect_bad_pin"]
    assert "no token labelled 'no-such-token'" in token_run["inspect_no_token"]


def test_inspect_decides_from_the_public_key_alone(token_run: dict[str, Any]) -> None:
    """What a release would lead to, known before it: free, already there, or a conflict."""
    got = token_run["inspect"]
    assert got["free"] is None and got["access_only"] is None
    assert got["held"] == [token_run["first"]["uri"], "unchanged"]
    assert "already holds a conflicting private key under label 'WEB'" in got["other"]
    assert got["other_replace"] is None
