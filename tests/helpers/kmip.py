"""PyKMIP's reference server on a free loopback port, mutual TLS with a throwaway CA; stopped by pid.

PyKMIP 0.11 runs as shipped on Python 3.11 with cryptography 50 and SQLAlchemy 2.1: its server
builds a TLS 1.2 context, requires a client certificate (``CERT_REQUIRED``) with the clientAuth
extended key usage, and keeps its objects in SQLite. No shim is needed; nothing in TLS is relaxed.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import procs
from tests.helpers.postgres import free_port
from tests.helpers.testca import Issued, TestCA

BIN = Path(sys.executable).parent


@dataclass
class KmipServer:
    base: Path
    ca: TestCA
    server_cert: Issued
    client_cert: Issued
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.base / "pykmip-server.log"

    def start(self) -> KmipServer:
        self.port = self.port or free_port()
        policies = self.base / "policies"
        policies.mkdir(exist_ok=True)
        log = open(self.base / "pykmip-stdout.log", "ab")  # noqa: SIM115 - closed with the process
        conf = self.base / "server.conf"
        conf.write_text(
            "[server]\n"
            "hostname=127.0.0.1\n"
            f"port={self.port}\n"
            f"certificate_path={self.server_cert.cert}\n"
            f"key_path={self.server_cert.key}\n"
            f"ca_path={self.ca.path}\n"
            "auth_suite=TLS1.2\n"
            f"policy_path={policies}\n"
            "enable_tls_client_auth=True\n"
            "logging_level=INFO\n"
            f"database_path={self.base / 'pykmip.db'}\n"
        )
        self.proc = procs.spawn(
            [str(BIN / "pykmip-server"), f"--config_path={conf}", f"--log_path={self.log_path}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pykmip-server exited: " + self.logs())
            if self._tls_ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("pykmip-server did not come up: " + self.logs())

    def _tls_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca.path))
        ctx.load_cert_chain(str(self.client_cert.cert), str(self.client_cert.key))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    return True
        except (OSError, ssl.SSLError):
            return False

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, signal.SIGKILL)
        self.proc = None

    def logs(self) -> str:
        out = []
        for p in (self.log_path, self.base / "pykmip-stdout.log"):
            if p.exists():
                out.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(out)


def make(base: Path) -> KmipServer:
    """Certificates for a server on 127.0.0.1 and a client 'keybroker'; not started yet."""
    base.mkdir(parents=True, exist_ok=True)
    ca = TestCA(base / "pki", "keybroker test KMIP CA")
    return KmipServer(
        base,
        ca,
        ca.issue("kmip-server", "127.0.0.1", server=True),
        ca.issue("keybroker-client", "keybroker", server=False),
    )
