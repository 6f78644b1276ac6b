"""keybroker.client and keybroker-client load without the server's dependencies (a workload image
need not carry FastAPI, SQLAlchemy, uvicorn, Alembic, psycopg, hvac, PyKMIP or regopy)."""

from __future__ import annotations

import subprocess
import sys

#: pydantic is not here: typer itself needs it.
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "uvicorn",
    "alembic",
    "psycopg",
    "hvac",
    "kmip",
    "regopy",
)

PROBE = """
import importlib, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
for module in sys.argv[1:]:
    importlib.import_module(module)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
print(",".join(loaded) or "none")
"""

MODULES = [
    "keybroker.client",
    "keybroker.client.evidence",
    "keybroker.client.http",
    "keybroker.client.protocol_v1",
    "keybroker.client.protocol_v0",
    "keybroker.client.pkcs11_import",
    "keybroker.client.unwrap",
    "keybroker.cli.client",
]


def _probe(blocked: tuple[str, ...]) -> str:
    return f"BLOCKED = {blocked!r}\n" + PROBE


def test_client_imports_without_server_dependencies() -> None:
    # the library needs not even pydantic
    proc = subprocess.run(
        [sys.executable, "-c", _probe((*SERVER_ONLY, "pydantic")), *MODULES[:-1]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def test_the_cli_runs_without_server_dependencies() -> None:
    run = _probe(SERVER_ONLY) + "\nfrom keybroker.cli.client import app\napp(['version'])\n"
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=60)
    assert "keybroker-client 0.1.0" in proc.stdout, proc.stderr
