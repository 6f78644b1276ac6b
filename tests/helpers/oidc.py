"""A real OpenID Connect provider for the tests: panva's ``oidc-provider`` (npm), over HTTPS on
loopback, in a process group of its own (``tests/helpers/procs.py``).

It is installed with ``npm ci`` from the pinned ``oidc/package-lock.json`` into a cache directory
(``$KEYBROKER_TEST_CACHE``, default ``~/.cache/keybroker-tests``), once. Without node/npm or the
registry the tests that need it skip, saying why (``KEYBROKER_REQUIRE_OIDC=1``: fail instead).

The issuer is ``https://localhost:<port>`` while keybroker is reached at ``https://127.0.0.1:<port>``:
two sites, as an organisation's provider and the broker are, so the browser's SameSite rules apply
between them as they would in production.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey
from tests.helpers import procs
from tests.helpers.postgres import free_port
from tests.helpers.testca import TestCA

HERE = Path(__file__).resolve().parent / "oidc"
VERSION = "9.13.3"
CLIENT_ID = "keybroker-console"
API_AUDIENCE = "urn:keybroker:api"
#: The people the provider knows: the login name typed on its page picks one (and is their ``sub``).
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {
        "sub": "alice",
        "email": "alice@example.com",
        "name": "Alice Admin",
        "groups": ["kb-keys", "kb-policies", "kb-audit", "kb-ops"],
    },
    "bob": {"sub": "bob", "email": "bob@example.com", "name": "Bob Auditor", "groups": ["kb-audit"]},
    "carol": {
        "sub": "carol",
        "email": "carol@example.com",
        "name": "Carol Platform",
        "groups": ["kb-platform"],
    },
    "mallory": {
        "sub": "mallory",
        "email": "mallory@example.com",
        "name": "Mallory",
        "groups": ["other"],
    },
}
#: The claim -> role mapping keybroker is configured with.
ROLE_MAPPING = {
    "kb-keys": ["key-admin"],
    "kb-policies": ["policy-admin"],
    "kb-audit": ["auditor"],
    "kb-ops": ["operator"],
    # a custom role: the test that signs Carol in creates it (tests/integration/test_console_browser.py)
    "kb-platform": ["platform-admin"],
}
#: Machine clients (client credentials) and the groups their access tokens carry.
MACHINES = {"ci-deployer": ["kb-audit"], "stranger": []}


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("KEYBROKER_REQUIRE_OIDC") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def install() -> Path:
    """The directory with oidc-provider installed (pinned lockfile), or skip saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _fail_or_skip("node and npm are needed for the OpenID provider (oidc-provider)")
    cache = Path(os.environ.get("KEYBROKER_TEST_CACHE", Path.home() / ".cache" / "keybroker-tests"))
    target = cache / f"oidc-provider-{VERSION}"
    marker = target / "node_modules" / "oidc-provider" / "package.json"
    lock = (HERE / "package-lock.json").read_bytes()
    if not marker.exists() or (target / "package-lock.json").read_bytes() != lock:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "package.json", target / "package.json")
        shutil.copy(HERE / "package-lock.json", target / "package-lock.json")
        done = subprocess.run(
            [str(npm), "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not marker.exists():
            _fail_or_skip(f"npm ci of oidc-provider@{VERSION} failed: {done.stderr.strip()[-600:]}")
    if json.loads(marker.read_text())["version"] != VERSION:
        _fail_or_skip(f"{marker} is not version {VERSION}")
    shutil.copy(HERE / "server.mjs", target / "server.mjs")
    return target


@dataclass
class OidcProvider:
    directory: Path
    #: keybroker's console callback(s), registered with the provider.
    redirect_uris: list[str]
    id_token_ttl: int = 3600
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    machine_secrets: dict[str, str] = field(default_factory=dict)
    ca: TestCA | None = None
    #: The provider's own signing keys (the tests sign tokens with them to test keybroker's claim checks).
    signing_keys: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None
        return self.ca.path

    @property
    def secret_file(self) -> Path:
        return self.directory / "client-secret"

    def start(self) -> OidcProvider:
        installed = install()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.ca = TestCA(self.directory / "tls", name="test OpenID provider CA")
        leaf = self.ca.issue("idp", "localhost", server=True)
        self.secret_file.write_text(self.client_secret + "\n")
        self.secret_file.chmod(0o600)
        self.machine_secrets = {m: secrets.token_urlsafe(24) for m in MACHINES}
        rsa = RSAKey.generate_key(
            2048, parameters={"kid": "rs-1", "use": "sig", "alg": "RS256"}, private=True
        )
        ec = ECKey.generate_key(
            "P-256", parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"}, private=True
        )
        self.signing_keys = {"rs-1": rsa, "ec-1": ec}
        clients = [
            {
                "client_id": CLIENT_ID,
                "client_secret": self.client_secret,
                "redirect_uris": self.redirect_uris,
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            },
            *(
                {
                    "client_id": m,
                    "client_secret": s,
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": [],
                    "token_endpoint_auth_method": "client_secret_basic",
                }
                for m, s in self.machine_secrets.items()
            ),
        ]
        conf = {
            "issuer": self.issuer,
            "port": self.port,
            "cert": str(leaf.cert),
            "key": str(leaf.key),
            "jwks": {"keys": [rsa.as_dict(private=True), ec.as_dict(private=True)]},
            "cookie_key": secrets.token_urlsafe(32),
            "clients": clients,
            "accounts": ACCOUNTS,
            "client_groups": MACHINES,
            "api_audience": API_AUDIENCE,
            "id_token_ttl": self.id_token_ttl,
        }
        conf_file = self.directory / "provider.json"
        conf_file.write_text(json.dumps(conf))
        log_path = self.directory / "provider.log"
        log = open(log_path, "a")  # noqa: SIM115 - closed with the process
        self.proc = procs.spawn(
            ["node", str(installed / "server.mjs"), str(conf_file)],
            cwd=installed,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("oidc-provider exited: " + log_path.read_text())
            try:
                r = httpx.get(self.issuer + "/.well-known/openid-configuration", verify=self.ssl(), timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("oidc-provider did not come up: " + log_path.read_text())

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
        self.proc = None

    def machine_token(self, client_id: str, *, resource: str = API_AUDIENCE) -> str:
        """A JWT access token for the API, by the client credentials grant."""
        r = httpx.post(
            self.metadata()["token_endpoint"],
            data={"grant_type": "client_credentials", "resource": resource, "scope": "api"},
            auth=(client_id, self.machine_secrets[client_id]),
            verify=self.ssl(),
            timeout=10,
        )
        r.raise_for_status()
        return str(r.json()["access_token"])

    def metadata(self) -> dict[str, Any]:
        r = httpx.get(self.issuer + "/.well-known/openid-configuration", verify=self.ssl(), timeout=10)
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def config_toml(self, *, api: bool = True) -> str:
        """keybroker's ``[oidc]`` section for this provider."""
        lines = [
            "[oidc]",
            f'issuer = "{self.issuer}"',
            f'client_id = "{CLIENT_ID}"',
            f'client_secret_file = "{self.secret_file}"',
            f'ca_file = "{self.ca_file}"',
            'scopes = ["openid", "email", "profile", "groups"]',
            'roles_claim = "groups"',
        ]
        if api:
            lines.append(f'api_audience = "{API_AUDIENCE}"')
        lines.append("[oidc.role_mapping]")
        lines += [f'"{group}" = {json.dumps(roles)}' for group, roles in ROLE_MAPPING.items()]
        return "\n".join(lines) + "\n"
