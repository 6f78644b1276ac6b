"""docs/nginx.md, executed: the seed scenario from an empty working directory to an HTTPS response.

The doc's ``sh`` blocks run in order in one ``bash -euo pipefail`` with ``WORK``, ``KB_PORT`` and
``NGINX_PORT`` pointing at a temp dir and free ports: a real ``keybroker serve --dev``, a policy, an
RSA-3072 key and its certificate through the API, a SoftHSM token, ``keybroker-client provision`` as a
simulated TD, nginx (Debian's, with the pkcs11 engine) serving with the key from the token, the wrong
TD. The test then checks, itself: a TLS handshake trusting the issuing CA presents the broker's key,
and one trusting only the broker's TLS anchor refuses nginx;
the token holds exactly that key, sensitive and non-extractable; the denial is audited; provisioning
again changes nothing. Then the doc's teardown block stops nginx and keybroker; leftovers are killed
by pid. The block marked ``setup`` (packages, venv) is what ``make test`` does; it is checked against
``scripts/install-system-deps.sh`` instead of run.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.helpers.postgres import free_port

from keybroker.tee.sim.snp import DEFAULT_MEASUREMENT

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "nginx.md"
INSTALL = ROOT / "scripts" / "install-system-deps.sh"
BIN = Path(sys.executable).parent
SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PACKAGES = {
    "nginx": lambda: Path("/usr/sbin/nginx").exists(),
    "softhsm2": lambda: SOFTHSM_MODULE.exists() and shutil.which("softhsm2-util") is not None,
    "libengine-pkcs11-openssl": lambda: bool(glob.glob("/usr/lib/*/engines-3/pkcs11.so")),
}
EXPORTED = ("KEY", "POLICY", "TOKEN", "CA", "ISSUING_CA", "KB")


@dataclass(frozen=True)
class Block:
    kind: str  # "run", "setup" or "teardown"
    code: str


def doc_blocks(text: str) -> list[Block]:
    blocks = []
    for m in re.finditer(r"(?:<!-- doc-test: (\w+) -->\n)?```(\w*)\n(.*?)```", text, re.S):
        marker, lang, code = m.group(1), m.group(2), m.group(3)
        assert lang in ("sh", ""), f"docs/nginx.md: a ```{lang} block would not be tested; use sh"
        if lang == "sh":
            assert marker in (None, "setup", "teardown"), marker
            blocks.append(Block(marker or "run", code))
    return blocks


def _missing_packages() -> list[str]:
    return [name for name, present in PACKAGES.items() if not present()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop(pid_file: Path, sig: int) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _alive(pid):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _setup_block() -> str:
    blocks = doc_blocks(DOC.read_text())
    assert [b.kind for b in blocks].count("setup") == 1 and [b.kind for b in blocks].count("teardown") == 1
    return next(b for b in blocks if b.kind == "setup").code


def test_doc_setup_block_is_what_make_test_installs() -> None:
    setup = _setup_block().strip().splitlines()
    apt = "$SUDO apt-get install -y --no-install-recommends "
    assert setup[2].startswith(apt) and setup[3:] == ["make venv", "export PATH=$PWD/.venv/bin:$PATH"]
    packages = setup[2].removeprefix(apt).split()
    assert packages == list(PACKAGES)
    script = INSTALL.read_text()
    for name in packages:
        assert f"need+=({name})" in script, f"{INSTALL.name} does not install {name}"


@pytest.mark.parametrize(("uid", "expected_prefix"), [("0", ""), ("1000", "sudo ")])
def test_doc_setup_block_uses_sudo_only_when_not_root(uid: str, expected_prefix: str) -> None:
    """The setup block as pasted by root (no sudo: a root shell often has none) and by a user:
    ``id``, ``sudo``, ``apt-get`` and ``make`` are stand-ins that record what would run."""
    shims = (
        f"id() {{ echo {uid}; }}\n"
        'sudo() { echo "sudo $*"; }\n'
        'apt-get() { echo "apt-get $*"; }\n'
        'make() { echo "make $*"; }\n'
    )
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shims + _setup_block()],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PWD": str(ROOT)},
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{expected_prefix}apt-get update",
        f"{expected_prefix}apt-get install -y --no-install-recommends {' '.join(PACKAGES)}",
        "make venv",
    ]


@pytest.fixture
def requirements() -> None:
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() == 0:
        pytest.fail(
            f"Debian packages missing although running as root: {', '.join(missing)} (make test installs them)"
        )
    pytest.skip(f"Debian packages missing and not root: {', '.join(missing)} (sudo make system-deps)")


def _served_public_key(port: int, ca: Path) -> Any:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_key()


def _token_objects(work: Path) -> list[dict[str, Any]]:
    probe = (
        "import json, sys; from pathlib import Path; "
        "from keybroker.client.pkcs11_import import TokenTarget, list_objects; "
        "print(json.dumps(list_objects(TokenTarget(Path(sys.argv[1]), 'KMS', sys.argv[2], ''))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(SOFTHSM_MODULE), (work / "pin").read_text().strip()],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SOFTHSM2_CONF": str(work / "softhsm" / "softhsm2.conf")},
    )
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


#: The walkthrough with an SEV-SNP guest instead of a TD: the same doc, its policy an ``snp`` section
#: for the SNP simulator's default guest, ``--tee sim-snp``, the other guest another measurement.
_SNP_POLICY = """"attestation_type": ["SNP"],
  "snp": {"attributes": {
    "measurement": ["MEASUREMENT"],
    "vmpl": [0],
    "minimum_tcb": {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84}}},
  "allow_simulated": true""".replace("MEASUREMENT", DEFAULT_MEASUREMENT.hex())


def _as_snp(text: str) -> str:
    start = text.index('"attestation_type": ["TDX"]')
    end = text.index('"allow_simulated": true', start) + len('"allow_simulated": true')
    text = text[:start] + _SNP_POLICY + text[end:]
    text = text.replace("--tee sim-tdx", "--tee sim-snp")
    return text.replace("--sim-field mrtd=$(printf '%096d' 0)", "--sim-field measurement=$(printf '%096d' 0)")


@pytest.mark.parametrize("tee", ["tdx", "snp"])
def test_nginx_walkthrough(requirements: None, tmp_path: Path, tee: str) -> None:
    """docs/nginx.md as written (a TD), and the same walkthrough with an SEV-SNP guest."""
    work = tmp_path / "work"
    text = DOC.read_text()
    blocks = doc_blocks(text if tee == "tdx" else _as_snp(text))
    claim = "mrtd" if tee == "tdx" else "measurement"
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "OPENSSL_CONF")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        "WORK": str(work),
        "KB_PORT": str(free_port()),
        "NGINX_PORT": str(free_port()),
    }
    dump = "".join(f'printf "%s=%s\\n" {v} "${v}" >> "$WORK/.doc-vars"\n' for v in EXPORTED)
    script = "set -euo pipefail\n" + "\n".join(b.code for b in blocks if b.kind == "run") + dump
    teardown = "set -euo pipefail\n" + "\n".join(b.code for b in blocks if b.kind == "teardown")
    try:
        started = time.perf_counter()
        run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=240)
        elapsed = time.perf_counter() - started
        logs = "".join(
            f"\n--- {p.name}:\n{p.read_text()[-3000:]}"
            for p in (work / "keybroker.log", work / "nginx" / "error.log")
            if p.exists()
        )
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}{logs}"
        doc_vars = dict(line.split("=", 1) for line in (work / ".doc-vars").read_text().splitlines())
        key, ca, issuing_ca = doc_vars["KEY"], Path(doc_vars["CA"]), Path(doc_vars["ISSUING_CA"])

        # what the doc says the reader sees
        assert f"pkcs11:token=KMS;id=%01;object=RSAKEY;type=private {key}" in run.stdout
        assert "hello from a TD" in run.stdout
        assert "not the broker (curl exit 60)" in run.stdout
        assert "nginx serves the broker's key" in run.stdout
        assert "keybroker-client exit 1" in run.stdout
        assert "denied by the key broker (403)" in run.stderr and f"{claim} " + "00" * 48 in run.stderr

        # the handshake proves the broker's key, checked here independently of the doc
        with httpx.Client(
            base_url=doc_vars["KB"],
            verify=ssl.create_default_context(cafile=str(ca)),
            headers={"Authorization": f"Bearer {doc_vars['TOKEN']}"},
        ) as admin:
            info = admin.get(f"/kbs/v1/keys/{key}").json()["key_information"]
            audit = admin.get("/kbs/v1/audit", params={"limit": 1000}).json()
        broker_public = serialization.load_pem_public_key(info["public_key"].encode())
        served = _served_public_key(int(env["NGINX_PORT"]), issuing_ca)
        with pytest.raises(ssl.SSLCertVerificationError):
            _served_public_key(int(env["NGINX_PORT"]), ca)  # nginx does not pass for the broker
        assert served.public_numbers() == broker_public.public_numbers()  # type: ignore[union-attr]
        assert (info["algorithm"], info["key_length"]) == ("RSA", 3072)

        # one success (provision), then the wrong TD's denial naming MRTD
        transfers = [r for r in audit if r["action"] == "key.transfer" and r["object_id"] == key]
        assert [r["outcome"] for r in transfers] == ["success", "denied"]
        assert claim in transfers[-1]["reason"]

        # the token: the key, protected, and nothing from the wrong TD
        objects = _token_objects(work)
        assert sorted((o["class"], o["label"], o["id"]) for o in objects) == [
            ("private", "RSAKEY", "01"),
            ("public", "RSAKEY", "01"),
        ]
        private = next(o for o in objects if o["class"] == "private")
        assert (private["private"], private["sensitive"], private["extractable"]) == (True, True, False)

        # at the next boot: provisioning again is a no-op (while nginx uses the token)
        again = subprocess.run(
            [str(BIN / "keybroker-client"), "provision", "--config", str(work / "keys.txt")]
            + ["--server", doc_vars["KB"], "--ca-file", str(ca), "--tee", f"sim-{tee}"]
            + ["--dev-pki", str(work / "kb" / "dev-pki"), "--pkcs11-module", str(SOFTHSM_MODULE)]
            + ["--pin-file", str(work / "pin")],
            env={**env, "SOFTHSM2_CONF": str(work / "softhsm" / "softhsm2.conf")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and "unchanged:" in again.stderr, again.stderr
        assert "nothing released" in run.stderr  # the doc's own re-run
        with httpx.Client(
            base_url=doc_vars["KB"],
            verify=ssl.create_default_context(cafile=str(ca)),
            headers={"Authorization": f"Bearer {doc_vars['TOKEN']}"},
        ) as admin:
            audit = admin.get("/kbs/v1/audit", params={"limit": 1000}).json()
        transfers = [r for r in audit if r["action"] == "key.transfer" and r["object_id"] == key]
        assert [r["outcome"] for r in transfers] == ["success", "denied"]  # the re-runs released nothing
        assert (
            _served_public_key(int(env["NGINX_PORT"]), issuing_ca).public_numbers()
            == broker_public.public_numbers()
        )  # type: ignore[union-attr]
        print(f"docs/nginx.md ran in {elapsed:.1f} s")

        stop = subprocess.run(["bash", "-c", teardown], env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
    finally:
        _stop(work / "nginx" / "nginx.pid", signal.SIGQUIT)
        _stop(work / "keybroker.pid", signal.SIGTERM)
    for pid_file in (work / "nginx" / "nginx.pid", work / "keybroker.pid"):
        deadline = time.monotonic() + 15
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else 0
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (pid and _alive(pid)), f"{pid_file.name}: process {pid} still running"
