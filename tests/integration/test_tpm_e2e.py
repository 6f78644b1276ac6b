"""A TPM machine end to end, every piece real: ``keybroker serve --dev`` trusting swtpm's local CA for
EK certificates (``[tpm] dev_ek_roots``), a real swtpm, ``keybroker-client tpm enrol`` (tpm2-tools:
the AK made under the EK, ActivateCredential), ``keybroker tpm ak approve``, then ``keybroker-client
get-key --tee tpm`` (/kbs/v1, ``Attestation-Type: TPM``) and ``get-resource --tee tpm`` (/kbs/v0)
receive the key; after a PCR changes, both are denied with the reason (exit 1)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.helpers.server import Server, keybroker
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm

from keybroker.client.tpm import TpmTools

pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

BIN = Path(sys.executable).parent
AK_HANDLE = "0x81010050"
PCRS = "sha256:0,7,16"


@dataclass
class Setup:
    server: Server
    swtpm: Swtpm
    admin: httpx.Client
    work: Path

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "keybroker-client"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def tpm_args(self) -> list[str]:
        tcti = self.swtpm.env["TPM2TOOLS_TCTI"]
        return ["--tpm", f"tcti={tcti}", "--tpm", f"ak-handle={AK_HANDLE}"]

    def server_args(self) -> list[str]:
        return ["--server", self.server.url, "--ca-file", str(self.server.ca)]


def _pcr16(swtpm: Swtpm, work: Path) -> str:
    tools = TpmTools(swtpm.env["TPM2TOOLS_TCTI"], work=work)
    _, _, pcrs = tools.quote(AK_HANDLE, b"probe", "sha256:16")
    return pcrs["sha256"][16].hex()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("tpm-e2e")
    with Swtpm(base) as swtpm:
        config = base / "keybroker.toml"
        ca = swtpm.ca_dir
        config.write_text(
            f'[tpm]\ndev_ek_roots = ["{ca / "issuercert.pem"}", "{ca / "swtpm-localca-rootca-cert.pem"}"]\n'
        )
        server = Server(base / "data", extra=["--dev", "--config", str(config)]).start()
        try:
            token = keybroker(
                "token", "create", "--data-dir", str(server.data_dir), "--permissions", "*:*", "--ttl", "1h"
            ).stdout.strip()
            admin = server.client(token)
            work = base / "work"
            work.mkdir()
            s = Setup(server, swtpm, admin, work)
            yield s
            admin.close()
        finally:
            server.stop()


def test_a_tpm_machine_enrols_and_receives_a_key_through_both_protocols(setup: Setup) -> None:
    s = setup
    enroller = keybroker(
        "token",
        "create",
        "--data-dir",
        str(s.server.data_dir),
        "--permissions",
        "tpm_aks:create",
        "--ttl",
        "1h",
    ).stdout.strip()
    r = s.client("tpm", "enrol", *s.server_args(), "--token", enroller, "--label", "machine-1", *s.tpm_args())
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["status"] == "pending" and record["ek_root"] == "dev" and "pending" in r.stderr

    listed = keybroker("tpm", "ak", "list", "--data-dir", str(s.server.data_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == [record["name"]]
    approved = keybroker("tpm", "ak", "approve", record["name"], "--data-dir", str(s.server.data_dir))
    assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr

    policy = {
        "attestation_type": ["TPM"],
        "tpm": {
            "attributes": {"pcrs": {"sha256": {"16": [_pcr16(s.swtpm, s.work)]}}, "ak_trust": ["enrolled"]}
        },
        "allow_simulated": True,
    }
    r2 = s.admin.post("/kbs/v1/key-transfer-policies", json=policy)
    assert r2.status_code == 201, r2.text
    policy_id = r2.json()["id"]
    secret = os.urandom(32)
    r2 = s.admin.post(
        "/kbs/v1/keys",
        json={
            "key_information": {"algorithm": "AES", "key_string": base64.b64encode(secret).decode()},
            "transfer_policy_id": policy_id,
        },
    )
    key_id = r2.json()["key_information"]["id"]
    assert s.admin.post("/kbs/v0/resource/default/key/tpm", json={"key_id": key_id}).status_code == 204
    r2 = s.admin.post("/kbs/v0/resource-policy/default/key/tpm", json={"transfer_policy_id": policy_id})
    assert r2.status_code == 204, r2.text

    out = s.work / "key.bin"
    evidence = [*s.tpm_args(), "--tpm", f"pcrs={PCRS}", "--tpm", "event-log=none"]
    r = s.client("get-key", key_id, *s.server_args(), "--tee", "tpm", *evidence, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == secret
    v0_out = s.work / "resource.bin"
    r = s.client(
        "get-resource", "default/key/tpm", *s.server_args(), "--tee", "tpm", *evidence, "--out", str(v0_out)
    )
    assert r.returncode == 0, r.stderr
    assert v0_out.read_bytes() == secret

    s.swtpm.run("tpm2_pcrextend", f"16:sha256={'ee' * 32}")
    changed = _pcr16(s.swtpm, s.work)
    r = s.client(
        "get-key", key_id, *s.server_args(), "--tee", "tpm", *evidence, "--out", str(s.work / "again")
    )
    assert r.returncode == 1, r.stderr
    assert f"pcrs.sha256.16 {changed} is not in the policy's list" in r.stderr
    r = s.client(
        "get-resource",
        "default/key/tpm",
        *s.server_args(),
        "--tee",
        "tpm",
        *evidence,
        "--out",
        str(s.work / "v0"),
    )
    assert r.returncode == 1 and "pcrs.sha256.16" in r.stderr, r.stderr
    assert not (s.work / "again").exists() and not (s.work / "v0").exists()
    transfers = [
        a
        for a in s.admin.get("/kbs/v1/audit", params={"limit": 1000}).json()
        if a["action"] == "key.transfer"
    ]
    assert [a["outcome"] for a in transfers if a["object_id"] == key_id][-2:] == ["success", "denied"]
