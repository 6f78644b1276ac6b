"""How a collateral source that cannot be used is told (the console's *Refresh now*): a TLS
certificate that does not verify names the setting that holds the CA; a source that does not
answer says so. Against a real TLS server on loopback, not a mock."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tests.helpers.postgres import free_port
from tests.helpers.testca import TestCA

from keybroker.collateral.fetch import PcsClient
from keybroker.collateral.refresh import SourceUnreachable, unreachable
from keybroker.errors import CollateralNotFound


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def tls_source(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server whose certificate a private CA issued: (its URL, that CA's file)."""
    ca = TestCA(tmp_path / "ca", name="private PCCS CA")
    leaf = ca.issue("pccs", "127.0.0.1", server=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert, leaf.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca.path
    finally:
        server.shutdown()
        server.server_close()


def test_a_certificate_that_does_not_verify_names_the_ca_setting(tls_source: tuple[str, Path]) -> None:
    url, ca_file = tls_source
    with PcsClient(url, retries=0, timeout=5) as client, pytest.raises(httpx.TransportError) as raised:
        client.get("/sgx/certification/v4/rootcacrl")
    refusal = unreachable(raised.value, url)
    assert isinstance(refusal, SourceUnreachable) and refusal.status == 503
    assert refusal.detail == (
        f"the collateral source {url} presented a TLS certificate that does not verify "
        "(set [collateral] ca_file to its CA)"
    )
    # with its CA the same source answers (here: 404): the CA was the whole problem
    with PcsClient(url, ca_file=ca_file, retries=0, timeout=5) as client, pytest.raises(CollateralNotFound):
        client.get("/sgx/certification/v4/rootcacrl")


def test_a_source_that_does_not_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with PcsClient(url, retries=0, timeout=5) as client, pytest.raises(httpx.TransportError) as raised:
        client.get("/sgx/certification/v4/rootcacrl")
    refusal = unreachable(raised.value, url)
    assert refusal.detail.startswith(f"the collateral source {url} cannot be reached: ")
    assert "TLS" not in refusal.detail
