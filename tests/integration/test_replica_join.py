"""A replica joins with an empty data dir (real processes, one PostgreSQL), unsealed with the
operator commands as docs/ha.md says.

Before (issue 15): the second replica generated its own service CA (clients pinning the first
replica's failed) and its own token signing key (every admin and workload token got 401 there);
it worked only after ``ca/`` and ``token-signing-key.pem`` were copied by hand. Now what replicas
share comes from the database, sealed: the new replica serves a bootstrap certificate that only the
operator commands on its host trust until it is unsealed, then its own certificate from the shared
TLS anchor, for the names it serves, without a restart; and it never holds a CA private key.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from tests.helpers import cluster, postgres
from tests.helpers.server import Server, keybroker


@pytest.fixture
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    if server is None:
        pytest.skip("PostgreSQL binaries not installed")
    yield server
    server.stop()


def _served_chain(server: Server) -> list[x509.Certificate]:
    with ssl.create_connection(("127.0.0.1", server.port)) as raw:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return [x509.load_der_x509_certificate(der)]


def test_a_replica_joins_with_an_empty_data_dir(pg: postgres.PostgresServer, tmp_path: Path) -> None:
    c = cluster.Cluster(tmp_path / "cluster", pg.create_database("kb_join"))
    try:
        c.start(1)
        first = c.replicas[0]
        anchor = first.ca
        pinned = ssl.create_default_context(cafile=str(anchor))
        second = c.replica(1)
        second.extra += ["--tls-name", "kb1.test"]
        second.start()
        c.replicas.append(second)
        data = second.data_dir

        # sealed and new: nothing from the database yet, no private key; a bootstrap certificate
        # that clients pinning the TLS anchor refuse, and the local operator commands trust
        for name in ("ca/ca.pem", "ca/ca-key.pem", "ca/issuing-ca-key.pem", "token-signing-key.pem"):
            assert not (data / name).exists(), name
        assert json.loads((data / "server.json").read_text())["tls_anchor"] == "tls/bootstrap-ca.pem"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(second.url + "/healthz", verify=pinned)
        r = keybroker("operator", "status", "--data-dir", str(data))
        assert r.returncode == 1 and "sealed       True" in r.stdout, r.stdout + r.stderr

        for share in c.shares[:2]:
            r = keybroker("operator", "unseal", "--data-dir", str(data), input=share + "\n")
            assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "unsealed"

        # unsealed: its own certificate from the shared anchor, for its names, on new connections
        assert httpx.get(second.url + "/readyz", verify=pinned).status_code == 200
        leaf = _served_chain(second)[0]
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(anchor.read_bytes()))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "kb1.test" in names.get_values_for_type(x509.DNSName)
        assert leaf != _served_chain(first)[0]  # each replica its own certificate
        assert json.loads((data / "server.json").read_text())["tls_anchor"] == "ca/ca.pem"
        assert (data / "ca" / "ca.pem").read_bytes() == anchor.read_bytes()
        assert not (data / "tls" / "bootstrap-ca.pem").exists()
        assert not (data / "ca" / "ca-key.pem").exists() and not (data / "ca" / "issuing-ca-key.pem").exists()
        assert (data / "token-signing-key.pem").read_bytes() == (
            first.data_dir / "token-signing-key.pem"
        ).read_bytes()

        # one token signing key: the first replica's token works here, this host's CLI token there
        with httpx.Client(base_url=second.url, verify=pinned) as s:
            r = s.get("/kbs/v1/keys", headers={"Authorization": f"Bearer {c.admin_token}"})
            assert r.status_code == 200, r.text
        r = keybroker(
            "token", "create", "--data-dir", str(data), "--config", str(c.config), "--permissions", "*:*"
        )
        assert r.returncode == 0, r.stderr
        with first.client(r.stdout.strip()) as f:
            key = f.post(
                "/kbs/v1/keys", json={"key_information": {"algorithm": "EC", "curve_type": "secp384r1"}}
            )
            assert key.status_code == 201, key.text
        # one issuing CA: a key certificate from this replica chains to the first's issuing CA
        with second.client(c.admin_token) as s:
            kid = key.json()["key_information"]["id"]
            r = s.post(f"/kbs/v1/keys/{kid}/certificate", json={"common_name": "w", "sans": ["w.example"]})
            assert r.status_code == 201, r.text
            leaf, issuer = x509.load_pem_x509_certificates(r.json()["certificate"].encode())
        assert issuer == x509.load_pem_x509_certificate(
            (first.data_dir / "ca" / "issuing-ca.pem").read_bytes()
        )
        assert "Traceback" not in second.log()

        # restarted, sealed: it serves its certificate from the anchor at once
        second.stop()
        second.start()
        assert httpx.get(second.url + "/sys/v1/seal-status", verify=pinned).json()["sealed"] is True
        assert json.loads((data / "server.json").read_text())["tls_anchor"] == "ca/ca.pem"
    finally:
        c.stop()
