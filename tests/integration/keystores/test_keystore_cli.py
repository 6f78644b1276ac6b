"""``keybroker keystore check``: connectivity and permissions, and what is wrong when they fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import kmip as kmip_helper
from tests.helpers import openbao
from tests.helpers.server import keybroker
from tests.helpers.testca import TestCA

from .conftest import keystore_config, make_broker

FULL = """
path "keybroker/data/keys/*" { capabilities = ["create", "read", "update", "delete"] }
path "keybroker/metadata/keys/*" { capabilities = ["read", "delete", "list"] }
path "keybroker/metadata/keys" { capabilities = ["list"] }
"""
READ_ONLY = 'path "keybroker/data/keys/*" { capabilities = ["read"] }\n'


def _toml(section: str, cfg: dict[str, Any]) -> str:
    lines = [f"[{section}]"]
    for k, v in cfg.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def _check(tmp_path: Path, cfg: dict[str, Any]) -> tuple[int, str]:
    conf = tmp_path / "kb.toml"
    conf.write_text(f'data_dir = "{tmp_path / "data"}"\n' + _toml("keystore", cfg))
    r = keybroker("keystore", "check", "--config", str(conf), env={"COLUMNS": "200"})
    return r.returncode, r.stdout + r.stderr


def test_approle_with_the_right_policy_passes(tmp_path: Path, bao_dev: openbao.BaoServer) -> None:
    role_id, secret_id = bao_dev.approle("kb-full", FULL)
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    cfg = {
        "type": "vault",
        "address": bao_dev.address,
        "auth": {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_file)},
    }
    code, out = _check(tmp_path, cfg)
    assert code == 0, out
    assert "approle auth ok" in out and "kb-full" in out and "write, read and delete" in out

    # and the key store works with that AppRole through the API
    b = make_broker("vault", tmp_path / "broker", cfg)
    r = b.create({"algorithm": "RSA", "key_length": 2048})
    assert r.status_code == 201, r.text
    b.services.db.dispose()


def test_missing_permissions_are_named(tmp_path: Path, bao_dev: openbao.BaoServer) -> None:
    role_id, secret_id = bao_dev.approle("kb-readonly", READ_ONLY)
    cfg = {
        "type": "vault",
        "address": bao_dev.address,
        "auth": {"method": "approle", "role_id": role_id, "secret_id": secret_id},
    }
    code, out = _check(tmp_path, cfg)
    assert code == 1, out
    assert "lacks create, delete on keybroker/data/keys/*" in out


def test_bad_token_and_unreachable_server_are_told_apart(tmp_path: Path, bao_dev: openbao.BaoServer) -> None:
    cfg = {"type": "vault", "address": bao_dev.address, "auth": {"method": "token", "token": "not-a-token"}}
    code, out = _check(tmp_path, cfg)
    assert code == 1 and "invalid or expired" in out, out
    code, out = _check(tmp_path, {**cfg, "address": "http://127.0.0.1:9"})
    assert code == 1 and "unreachable" in out, out


def test_kmip_wrong_ca_is_reported(
    request: pytest.FixtureRequest, tmp_path: Path, kmip_server: kmip_helper.KmipServer
) -> None:
    cfg = keystore_config("kmip", request)
    code, out = _check(tmp_path, cfg)
    assert code == 0 and "KMIP 2.0" in out, out
    other = TestCA(tmp_path / "other-ca", "not the KMIP server's CA")
    code, out = _check(tmp_path, {**cfg, "ca_file": str(other.path)})
    assert code == 1 and "does not verify" in out, out
