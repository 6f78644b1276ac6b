"""Real backends for the key-store suites, each started once per session on loopback.

OpenBao: ``bao server -dev`` and a TLS server with on-disk storage; PyKMIP's server with mutual
TLS; a SoftHSM2 token. Each test gets a fresh keybroker (own SQLite database) on top.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.helpers import kmip as kmip_helper
from tests.helpers import openbao, softhsm

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings

BACKENDS = ["builtin", "vault-dev", "vault-tls", "kmip", "pkcs11"]


@pytest.fixture(scope="session")
def backends_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kb-backends-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def bao_dev(backends_dir: Path) -> Iterator[openbao.BaoServer]:
    srv = openbao.dev(backends_dir / "bao-dev")
    srv.enable_kv2("keybroker")
    srv.enable_transit("keybroker-unseal")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def bao_tls(backends_dir: Path) -> Iterator[openbao.BaoServer]:
    srv = openbao.file_tls(backends_dir / "bao-tls")
    srv.enable_kv2("keybroker")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def kmip_server(backends_dir: Path) -> Iterator[kmip_helper.KmipServer]:
    srv = kmip_helper.make(backends_dir / "kmip").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def hsm(backends_dir: Path) -> softhsm.SoftHsm:
    if softhsm.library() is None:
        if os.geteuid() != 0:
            pytest.skip("Debian package softhsm2 missing and not root (make test installs it as root)")
        pytest.fail("softhsm2 is missing although we are root: run scripts/install-system-deps.sh")
    return softhsm.make(backends_dir / "softhsm", label="keybroker")


def keystore_config(name: str, request: pytest.FixtureRequest, **extra: Any) -> dict[str, Any]:
    """The ``[keystore]`` section for backend ``name`` (starting its server on first use)."""
    if name == "builtin":
        return {"type": "builtin"}
    if name == "vault-dev":
        bao: openbao.BaoServer = request.getfixturevalue("bao_dev")
        return {
            "type": "vault",
            "address": bao.address,
            "auth": {"method": "token", "token": bao.root_token},
            **extra,
        }
    if name == "vault-tls":
        bao = request.getfixturevalue("bao_tls")
        return {
            "type": "vault",
            "address": bao.address,
            "ca_file": str(bao.tls_ca),
            "auth": {"method": "token", "token": bao.root_token},
            **extra,
        }
    if name == "kmip":
        k: kmip_helper.KmipServer = request.getfixturevalue("kmip_server")
        return {
            "type": "kmip",
            "host": "127.0.0.1",
            "port": k.port,
            "ca_file": str(k.ca.path),
            "client_cert": str(k.client_cert.cert),
            "client_key": str(k.client_cert.key),
            **extra,
        }
    if name == "pkcs11":
        h: softhsm.SoftHsm = request.getfixturevalue("hsm")
        return {
            "type": "pkcs11",
            "library": str(h.library),
            "token_label": h.label,
            "pin_file": str(h.pin_file()),
            **extra,
        }
    raise AssertionError(name)


@dataclass
class Broker:
    name: str
    services: Services
    client: TestClient
    headers: dict[str, str]

    @property
    def external(self) -> bool:
        return self.name != "builtin"

    def create(self, info: dict[str, Any], **extra: Any) -> Any:
        return self.client.post("/kbs/v1/keys", json={"key_information": info, **extra}, headers=self.headers)

    def listed(self) -> set[str]:
        r = self.client.get("/kbs/v1/keys", headers=self.headers)
        assert r.status_code == 200, r.text
        return {k["key_information"]["id"] for k in r.json()}


def make_broker(name: str, data_dir: Path, keystore: dict[str, Any], **settings: Any) -> Broker:
    svc = Services.build(
        Settings(
            data_dir=data_dir,
            database=f"sqlite:///{data_dir / 'kb.db'}",
            dev=True,
            keystore=keystore,
            **settings,
        )
    )
    client = TestClient(create_app(svc), base_url="https://testserver", raise_server_exceptions=False)
    headers = {"Authorization": "Bearer " + svc.tokens.mint("test-admin", ["*:*"])}
    return Broker(name, svc, client, headers)


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    b = make_broker(request.param, tmp_path / "data", keystore_config(request.param, request))
    yield b
    b.services.db.dispose()
