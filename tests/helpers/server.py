"""Start a real ``keybroker serve`` process on a free loopback port and stop it by pid."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.helpers import procs
from tests.helpers.postgres import free_port

BIN = Path(sys.executable).parent


def keybroker(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "keybroker"), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@dataclass
class Server:
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    #: The address it listens on: 0.0.0.0 or :: for every address (the client dials loopback).
    host: str = "127.0.0.1"
    #: The arguments after ``keybroker`` instead of ``serve --data-dir ... --listen ...`` (a
    #: documented command line), with ``port`` set to the port in it.
    argv: list[str] | None = None

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "ca" / "ca.pem"

    @property
    def anchor(self) -> Path:
        """What the server's record says to pin: the TLS anchor, or while a new replica is sealed
        its bootstrap CA (see ``keybroker.replica``)."""
        try:
            record = json.loads((self.data_dir / "server.json").read_text())
        except (OSError, ValueError):
            return self.ca
        if self.proc is not None and record.get("pid") != self.proc.pid:
            return self.ca
        return self.data_dir / (record.get("tls_anchor") or "ca/ca.pem")

    def start(self) -> Server:
        self.port = self.port or free_port()
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        args = self.argv or ["serve", "--data-dir", str(self.data_dir), "--listen", listen, *self.extra]
        self.proc = procs.spawn(
            [str(BIN / "keybroker"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("keybroker serve exited: " + self.log_path.read_text())
            try:
                anchor = self.anchor
                if anchor.exists():
                    httpx.get(
                        self.url + "/healthz",
                        verify=ssl.create_default_context(cafile=str(anchor)),
                        timeout=2,
                    )
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("keybroker serve did not come up: " + self.log_path.read_text())

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.anchor)),
            headers=headers,
            timeout=30,
        )
