"""``keybroker-client`` as a subprocess against a real ``keybroker serve --dev``, with simulated TDX
evidence: /kbs/v1 to a file and into SoftHSM, /kbs/v0 resources, denial (reasons, exit 1, audited,
nothing stored), a pinned CA (a wrong pin exits 4), and an unreachable broker (exit 3). No release is wasted: a key already
in place, a wrong PIN, a missing token or another key under the label cost no ``key.transfer``."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.api.test_transfer_v1 import TDX_SIM_POLICY
from tests.helpers import softhsm
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker

BIN = Path(sys.executable).parent
WRONG_MRTD = "mrtd=" + "00" * 48


@dataclass
class Broker:
    server: Server
    admin: httpx.Client
    policy: str
    rsa_key: str
    aes_key: str
    aes_secret: bytes
    resource_secret: bytes

    def args(self, *extra: str) -> list[str]:
        return [
            "--server",
            self.server.url,
            "--ca-file",
            str(self.server.ca),
            "--tee",
            "sim-tdx",
            "--dev-pki",
            str(self.server.data_dir / "dev-pki"),
            *extra,
        ]

    def public_key(self, key_id: str) -> Any:
        pem = self.admin.get(f"/kbs/v1/keys/{key_id}").json()["key_information"]["public_key"]
        return serialization.load_pem_public_key(pem.encode())

    def transfers(self, key_id: str) -> list[dict[str, Any]]:
        rows = self.admin.get("/kbs/v1/audit", params={"limit": 1000}).json()
        return [r for r in rows if r["action"] == "key.transfer" and r["object_id"] == key_id]

    def new_key(self, **info: Any) -> str:
        """A fresh key under the policy (its audit trail starts empty)."""
        info = info or {"algorithm": "RSA", "key_length": 3072}
        r = self.admin.post("/kbs/v1/keys", json={"key_information": info, "transfer_policy_id": self.policy})
        assert r.status_code == 201, r.text
        return str(r.json()["key_information"]["id"])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    server = Server(tmp_path_factory.mktemp("client-e2e") / "data", extra=["--dev"]).start()
    try:
        token = keybroker(
            "token", "create", "--data-dir", str(server.data_dir), "--permissions", "*:*", "--ttl", "1h"
        ).stdout.strip()
        admin = server.client(token)
        pid = admin.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY).json()["id"]
        rsa_key = admin.post(
            "/kbs/v1/keys",
            json={"key_information": {"algorithm": "RSA", "key_length": 3072}, "transfer_policy_id": pid},
        ).json()["key_information"]["id"]
        aes_secret = os.urandom(32)
        aes_key = admin.post(
            "/kbs/v1/keys",
            json={
                "key_information": {"algorithm": "AES", "key_string": base64.b64encode(aes_secret).decode()},
                "transfer_policy_id": pid,
            },
        ).json()["key_information"]["id"]
        resource_secret = os.urandom(48)
        r = admin.post(
            "/kbs/v0/resource/e2e/secret/one",
            content=resource_secret,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 204, r.text
        r = admin.post("/kbs/v0/resource-policy/e2e/secret/one", json={"transfer_policy_id": pid})
        assert r.status_code == 204, r.text
        yield Broker(server, admin, pid, rsa_key, aes_key, aes_secret, resource_secret)
        admin.close()
    finally:
        server.stop()


def client(*args: str, text: bool = True) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(
        [str(BIN / "keybroker-client"), *args],
        capture_output=True,
        text=text,
        timeout=120,
        env=dict(os.environ),
    )


def _secret_fragments(pem: bytes) -> list[str]:
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body = b"".join(pem.splitlines()[1:-1]).decode()
    return [body[100:160], der.hex()[200:260], base64.b64encode(der).decode()[300:360]]


def test_get_key_to_file(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "nginx.key"
    r = client("get-key", broker.rsa_key, *broker.args("--out", str(out), "-vv", "--timings"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(out.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == broker.public_key(broker.rsa_key).public_numbers()
    assert f"wrote RSA-3072 private key {broker.rsa_key} to {out} (mode 0600)" in r.stderr
    assert "NOT FOR PRODUCTION" in r.stderr and "timings: challenge" in r.stderr
    for fragment in _secret_fragments(out.read_bytes()):
        assert fragment not in r.stdout + r.stderr
    assert broker.transfers(broker.rsa_key)[-1]["outcome"] == "success"
    # a secret comes out raw
    raw = tmp_path / "data.key"
    r = client("get-key", broker.aes_key, *broker.args("--out", str(raw)))
    assert r.returncode == 0, r.stderr
    assert raw.read_bytes() == broker.aes_secret and "256-bit secret" in r.stderr


def _token_state(hsm: softhsm.SoftHsm, label: str) -> list[dict[str, Any]]:
    probe = (
        "import json, sys; from pathlib import Path; "
        "from keybroker.client.pkcs11_import import TokenTarget, list_objects; "
        "print(json.dumps(list_objects(TokenTarget(Path(sys.argv[1]), sys.argv[2], sys.argv[3], ''))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(hsm.library), label, softhsm.USER_PIN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def _token_public_key(hsm: softhsm.SoftHsm, token_label: str, label: str) -> Any:
    probe = (
        "import sys; from pathlib import Path; from pkcs11 import Attribute, ObjectClass; "
        "from keybroker.client.pkcs11_import import TokenTarget, _session; "
        "t = TokenTarget(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])\n"
        "with _session(t) as s:\n"
        "    o = next(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: t.label}))\n"
        "    print(int.from_bytes(o[Attribute.MODULUS], 'big'), int.from_bytes(o[Attribute.PUBLIC_EXPONENT], 'big'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(hsm.library), token_label, softhsm.USER_PIN, label],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    n, e = (int(x) for x in r.stdout.split())
    return rsa.RSAPublicNumbers(e, n)


@pytest.fixture
def token(tmp_path: Path) -> tuple[softhsm.SoftHsm, str]:
    if softhsm.library() is None:
        pytest.skip("softhsm2 is not installed (make test installs it when run as root)")
    label = "e2e-" + uuid.uuid4().hex[:8]
    return softhsm.make(tmp_path / "hsm", label), label


def test_get_key_into_softhsm_and_again(broker: Broker, token: tuple[softhsm.SoftHsm, str]) -> None:
    hsm, label = token
    args = ["--pkcs11-module", str(hsm.library), "--token-label", label, "--pin-file", str(hsm.pin_file())]
    args += ["--label", "nginx", "--id", "0a"]
    r = client("get-key", broker.rsa_key, *broker.args(*args))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pkcs11:token={label};id=%0A;object=nginx;type=private"
    assert f"imported: RSA-3072 private key {broker.rsa_key} as 'nginx'" in r.stderr
    objects = _token_state(hsm, label)
    assert [(o["class"], o["label"], o["id"]) for o in objects] == [
        ("private", "nginx", "0a"),
        ("public", "nginx", "0a"),
    ]
    assert (objects[0]["private"], objects[0]["sensitive"], objects[0]["extractable"]) == (True, True, False)
    released = len(broker.transfers(broker.rsa_key))
    r = client("get-key", broker.rsa_key, *broker.args(*args))
    assert r.returncode == 0 and "unchanged:" in r.stderr and "nothing released" in r.stderr, r.stderr
    assert r.stdout.strip() == f"pkcs11:token={label};id=%0A;object=nginx;type=private"
    assert len(broker.transfers(broker.rsa_key)) == released  # the key was there: no release
    # a wrong TD: denied, reasons printed, audited, nothing imported
    before = len(broker.transfers(broker.rsa_key))
    args[args.index("nginx")] = "STOLEN"
    args[args.index("0a")] = "0b"  # a free slot: under id 0a the token holds the key, so no release
    r = client("get-key", broker.rsa_key, *broker.args(*args, "--sim-field", WRONG_MRTD))
    assert r.returncode == 1, r.stderr
    assert (
        "denied by the key broker (403): the evidence does not satisfy the key's transfer policy" in r.stderr
    )
    assert "mrtd " + "00" * 48 + " is not in the policy's list" in r.stderr
    audit = broker.transfers(broker.rsa_key)
    assert len(audit) == before + 1 and audit[-1]["outcome"] == "denied" and "mrtd" in audit[-1]["reason"]
    assert [o["label"] for o in _token_state(hsm, label)] == ["nginx", "nginx"]


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_get_resource_v0(broker: Broker, key_type: str) -> None:
    r = client("get-resource", "e2e/secret/one", *broker.args("--key-type", key_type), text=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == broker.resource_secret


def test_get_resource_v0_denied_and_to_file(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = client("get-resource", "e2e/secret/one", *broker.args("--out", str(out), "--sim-field", WRONG_MRTD))
    assert r.returncode == 1 and "mrtd" in r.stderr and not out.exists()
    r = client("get-resource", "e2e/secret/one", *broker.args("--out", str(out)))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == broker.resource_secret and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_pinned_ca_and_a_wrong_pin(broker: Broker, tmp_path: Path) -> None:
    ca = x509.load_pem_x509_certificate(broker.server.ca.read_bytes())
    pin = ca.fingerprint(hashes.SHA384()).hex(":")
    base = broker.args("--out", str(tmp_path / "k"))
    base = base[:2] + base[4:]  # no --ca-file: the pin alone
    r = client("get-key", broker.aes_key, *base, "--ca-sha384", pin)
    assert r.returncode == 0, r.stderr
    before = len(broker.transfers(broker.aes_key))
    r = client("get-key", broker.aes_key, *base, "--ca-sha384", "11" * 48)
    assert r.returncode == 4 and "TLS verification failed" in r.stderr, r.stderr
    assert len(broker.transfers(broker.aes_key)) == before


def test_unreachable_exits_3(broker: Broker, tmp_path: Path) -> None:
    args = broker.args("--out", str(tmp_path / "k"), "--retries", "1")
    args[1] = f"https://127.0.0.1:{free_port()}"
    r = client("get-key", broker.aes_key, *args)
    assert r.returncode == 3 and "Key broker unreachable" in r.stderr, r.stderr
    assert "retrying" in r.stderr or "starting over" in r.stderr


def test_provision_keys_file_keeps_going_and_reports(
    broker: Broker, token: tuple[softhsm.SoftHsm, str], tmp_path: Path
) -> None:
    hsm, label = token
    pin = hsm.pin_file()
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "# <PKCS#11 URI> <key id>\n"
        f"pkcs11:token={label};object=DATA;type=private {broker.aes_key}\n"
        f"pkcs11:token={label};id=%01;object=WEB;type=private?pin-source=file:{pin} {broker.rsa_key}\n"
    )
    args = broker.args("--pkcs11-module", str(hsm.library), "--pin-file", str(pin))
    secret_releases = len(broker.transfers(broker.aes_key))
    r = client("provision", "--config", str(keys), *args)
    assert r.returncode == 2, (
        r.stderr
    )  # the highest code of the lines: a secret named for a token is a usage error
    assert r.stdout.splitlines() == [f"pkcs11:token={label};id=%01;object=WEB;type=private {broker.rsa_key}"]
    assert (
        f"{keys}:2 {broker.aes_key}" in r.stderr
        and "only RSA and EC private keys go into a token" in r.stderr
    )
    assert [(o["class"], o["label"]) for o in _token_state(hsm, label)] == [
        ("private", "WEB"),
        ("public", "WEB"),
    ]
    # the challenge said it is a secret: refused before a release
    assert "nothing was released" in r.stderr
    assert len(broker.transfers(broker.aes_key)) == secret_releases


def _keys_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_token_problems_stop_before_any_release(
    broker: Broker, token: tuple[softhsm.SoftHsm, str], tmp_path: Path
) -> None:
    """A wrong PIN or a missing token is found before the broker releases anything."""
    hsm, label = token
    key = broker.new_key()
    bad_pin = tmp_path / "bad-pin"
    bad_pin.write_text("0000\n")
    base = ["--pkcs11-module", str(hsm.library), "--label", "WEB"]
    r = client("get-key", key, *broker.args(*base, "--token-label", label, "--pin-file", str(bad_pin)))
    assert r.returncode == 1 and f"token {label!r} rejected the PIN" in r.stderr, r.stderr
    good_pin = str(hsm.pin_file())
    r = client("get-key", key, *broker.args(*base, "--token-label", "no-such-token", "--pin-file", good_pin))
    assert r.returncode == 1 and "no token labelled 'no-such-token'" in r.stderr, r.stderr
    keys = _keys_file(
        tmp_path / "keys.txt",
        f"pkcs11:token={label};object=WEB;type=private?pin-source=file:{bad_pin} {key}",
        f"pkcs11:token=no-such-token;object=WEB;type=private {key}",
    )
    r = client(
        "provision",
        "--config",
        str(keys),
        *broker.args("--pkcs11-module", str(hsm.library)),
        "--pin-file",
        good_pin,
    )
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert f"{keys}:1 {key}: PKCS#11 token: token {label!r} rejected the PIN" in r.stderr
    assert f"{keys}:2 {key}: PKCS#11 token: no token labelled 'no-such-token'" in r.stderr
    assert broker.transfers(key) == []  # not one release, not even a denial
    assert _token_state(hsm, label) == []


def test_another_key_under_the_label_is_refused_before_release(
    broker: Broker, token: tuple[softhsm.SoftHsm, str]
) -> None:
    hsm, label = token
    first, second = broker.new_key(), broker.new_key()
    args = ["--pkcs11-module", str(hsm.library), "--token-label", label, "--pin-file", str(hsm.pin_file())]
    args += ["--label", "WEB"]
    r = client("get-key", first, *broker.args(*args))
    assert r.returncode == 0 and "imported:" in r.stderr, r.stderr
    r = client("get-key", second, *broker.args(*args))
    assert r.returncode == 1 and "already holds a conflicting private key under label 'WEB'" in r.stderr
    assert broker.transfers(second) == []  # refused before the release
    r = client("get-key", second, *broker.args(*args, "--replace"))
    assert r.returncode == 0 and "replaced:" in r.stderr, r.stderr
    assert [t["outcome"] for t in broker.transfers(second)] == ["success"]
    assert [t["outcome"] for t in broker.transfers(first)] == ["success"]
    token_key = _token_public_key(hsm, label, "WEB")
    assert token_key == broker.public_key(second).public_numbers()


def test_provision_again_releases_nothing(
    broker: Broker, token: tuple[softhsm.SoftHsm, str], tmp_path: Path
) -> None:
    """The boot-time re-run: every key already in its token, so no release at all (RSA and EC)."""
    hsm, label = token
    rsa_key = broker.new_key()
    ec_key = broker.new_key(algorithm="EC", curve_type="prime256v1")
    keys = _keys_file(
        tmp_path / "keys.txt",
        f"pkcs11:token={label};id=%01;object=WEB;type=private {rsa_key}",
        f"pkcs11:token={label};object=EC;type=private {ec_key}",
    )
    args = broker.args("--pkcs11-module", str(hsm.library), "--pin-file", str(hsm.pin_file()))
    first = client("provision", "--config", str(keys), *args)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("imported:") == 2
    again = client("provision", "--config", str(keys), *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and again.stdout.count("pkcs11:") == 2
    for key in (rsa_key, ec_key):
        assert f"unchanged: key {key} is already in token {label!r}" in again.stderr
        assert [t["outcome"] for t in broker.transfers(key)] == ["success"]  # the first run's only


def test_get_key_to_a_file_again(broker: Broker, tmp_path: Path) -> None:
    key = broker.new_key()
    out = tmp_path / "tls.key"
    assert client("get-key", key, *broker.args("--out", str(out))).returncode == 0
    pem = out.read_bytes()
    for extra in ([], ["--keep-existing"]):
        r = client("get-key", key, *broker.args("--out", str(out), *extra))
        assert r.returncode == 0 and f"unchanged: {out} already holds key {key}" in r.stderr, r.stderr
    assert out.read_bytes() == pem and len(broker.transfers(key)) == 1
    # another key in the file: kept only on request, and then it is an error to keep the wrong key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out.write_bytes(other)
    r = client("get-key", key, *broker.args("--out", str(out), "--keep-existing"))
    assert r.returncode == 1 and f"{out} holds something other than key {key}" in r.stderr, r.stderr
    assert out.read_bytes() == other and len(broker.transfers(key)) == 1
    r = client("get-key", key, *broker.args("--out", str(out)))
    assert r.returncode == 0 and "replacing it" in r.stderr, r.stderr
    assert len(broker.transfers(key)) == 2
    written = serialization.load_pem_private_key(out.read_bytes(), None)
    assert written.public_key().public_numbers() == broker.public_key(key).public_numbers()  # type: ignore[union-attr]


def test_a_secret_in_a_file_is_released_again_unless_kept(broker: Broker, tmp_path: Path) -> None:
    key = broker.new_key(algorithm="AES", key_length=256)
    out = tmp_path / "data.key"
    assert client("get-key", key, *broker.args("--out", str(out))).returncode == 0
    secret = out.read_bytes()
    r = client("get-key", key, *broker.args("--out", str(out)))
    assert r.returncode == 0, r.stderr
    assert (
        "a secret cannot be compared with it without a release" in r.stderr and "--keep-existing" in r.stderr
    )
    assert out.read_bytes() == secret and len(broker.transfers(key)) == 2
    r = client("get-key", key, *broker.args("--out", str(out), "--keep-existing"))
    assert r.returncode == 0 and f"kept {out} (--keep-existing)" in r.stderr, r.stderr
    assert len(broker.transfers(key)) == 2
