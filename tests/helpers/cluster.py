"""Production replicas of ``keybroker serve`` on one PostgreSQL database, as an operator runs them.

Each replica is a real process (own process group, own data dir, own port), not ``--dev``: the key
store is initialized once through the first replica and each replica is unsealed with the same
shares (what ``operator init`` and ``operator unseal`` do, through the API: each CLI start costs
seconds here; ``docs/ha.md``'s test runs the commands themselves). Evidence comes from the TEE simulator: its
dev PKI's root is trusted through ``trust.dev_roots`` and its collateral imported into the database
(``collateral import``), as a site trusting a test root would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import postgres
from tests.helpers.server import Server, keybroker

from keybroker.tee import sim


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, top: dict[str, Any], sections: dict[str, dict[str, Any]]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, body in sections.items():
        lines.append(f"[{name}]")
        for k, v in body.items():
            if isinstance(v, dict):
                inline = ", ".join(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())
                lines.append(f"{k} = {{ {inline} }}")
            else:
                lines.append(f"{k} = {toml_value(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Cluster:
    base: Path
    database: str
    #: Extra sections of the replicas' configuration (e.g. ``keystore``).
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    replicas: list[Server] = field(default_factory=list)
    shares: list[str] = field(default_factory=list)
    admin_token: str = ""
    pki: sim.DevPki | None = None
    config: Path | None = None

    def _config(self) -> Path:
        if self.config is None:
            self.base.mkdir(parents=True, exist_ok=True)
            self.pki = sim.DevPki.load_or_create(self.base / "pki")
            sections = {"trust": {"dev_roots": [str(self.pki.root_pem_path)]}, **self.sections}
            self.config = write_config(self.base / "keybroker.toml", {"database": self.database}, sections)
        return self.config

    def data_dir(self, index: int) -> Path:
        return self.base / f"replica{index}" / "data"

    def replica(self, index: int) -> Server:
        """Replica ``index`` (not started)."""
        self.data_dir(index).parent.mkdir(parents=True, exist_ok=True)
        return Server(self.data_dir(index), extra=["--config", str(self._config())])

    def start(self, count: int) -> Cluster:
        """Start ``count`` replicas; the first initializes the key store; all are unsealed."""
        first = self.replica(0).start()
        self.replicas.append(first)
        with first.client() as c:  # what `keybroker operator init --json` prints (tested elsewhere)
            r = c.post("/sys/v1/init", json={"shares": 3, "threshold": 2})
            assert r.status_code == 200, r.text
        out = r.json()
        self.shares, self.admin_token = out["unseal_shares"], out["admin_token"]
        self.unseal(first)
        assert self.pki is not None
        imported = keybroker(
            "collateral",
            "import",
            str(self.pki.collateral_path("sgx")),
            str(self.pki.collateral_path("tdx")),
            "--config",
            str(self._config()),
            "--data-dir",
            str(first.data_dir),
        )
        assert imported.returncode == 0, imported.stdout + imported.stderr
        for i in range(1, count):
            self.add()
        return self

    def add(self) -> Server:
        """Start one more replica (an empty data dir: what it shares comes from the database) and
        unseal it; until then it serves a bootstrap certificate, pinned through its record."""
        index = len(self.replicas)
        server = self.replica(index).start()
        self.replicas.append(server)
        self.unseal(server)
        return server

    def unseal(self, server: Server) -> None:
        """Give the replica two shares (``keybroker operator unseal``, through the API)."""
        with server.client() as c:
            for share in self.shares[:2]:
                r = c.post("/sys/v1/unseal", json={"key": share})
                assert r.status_code == 200, r.text
        assert r.json()["sealed"] is False, r.text

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()


def start(
    pg: postgres.PostgresServer, base: Path, count: int, *, url_query: str = "", **sections: dict[str, Any]
) -> Cluster:
    database = pg.create_database("kb_" + base.name.replace("-", "_")[:40]) + url_query
    return Cluster(base, database, sections).start(count)
