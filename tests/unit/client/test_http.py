"""The client's transport: TLS verification with a CA file or a SHA-384 pin against a real local TLS
server, and the retry rules against a mock transport."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.helpers.testca import TestCA

from keybroker.client.errors import Denied, TlsVerificationFailed, Unreachable
from keybroker.client.http import RetryPolicy, TlsConfig, Transport, parse_sha384_pin
from keybroker.errors import InvalidInput


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Tls:
    ca: TestCA
    chain: Path
    key: Path
    leaf_der: bytes


def _fp(der: bytes) -> bytes:
    return hashlib.sha384(der).digest()


def _der(pem: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    d = tmp_path_factory.mktemp("tls-good")
    ca = TestCA(d)
    leaf = ca.issue("server", "localhost", server=True)
    chain = d / "chain.pem"
    chain.write_bytes(leaf.cert.read_bytes() + ca.path.read_bytes())
    return Tls(ca, chain, leaf.key, _der(leaf.cert))


@contextmanager
def https_server(chain: Path, key: Path) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _get(srv: ThreadingHTTPServer, tls: TlsConfig) -> httpx.Response:
    with Transport(
        f"https://127.0.0.1:{srv.server_address[1]}", tls, retry=RetryPolicy(attempts=1), timeout=5
    ) as t:
        return t.request("GET", "/")


def test_ca_file_and_pins_verify(good: Tls) -> None:
    ca_der = _der(good.ca.path)
    with https_server(good.chain, good.key) as srv:
        assert _get(srv, TlsConfig(ca_file=good.ca.path)).json() == {"ok": True}
        assert _get(srv, TlsConfig(ca_sha384=_fp(ca_der))).status_code == 200  # pin the CA
        assert _get(srv, TlsConfig(ca_sha384=_fp(good.leaf_der))).status_code == 200  # pin the leaf
        assert _get(srv, TlsConfig(ca_file=good.ca.path, ca_sha384=_fp(ca_der))).status_code == 200
        assert _get(srv, TlsConfig(ca_file=good.ca.path, ca_sha384=_fp(good.leaf_der))).status_code == 200
        assert srv.hits == 5  # type: ignore[attr-defined]


def test_wrong_pin_or_unknown_ca_sends_nothing(good: Tls, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", name="another CA")
    with https_server(good.chain, good.key) as srv:
        with pytest.raises(TlsVerificationFailed, match="pinned SHA-384"):
            _get(srv, TlsConfig(ca_sha384=bytes(48)))
        with pytest.raises(
            TlsVerificationFailed,
            match="self-signed certificate in certificate chain .verified against CA file",
        ):
            _get(srv, TlsConfig(ca_file=other.path))
        with pytest.raises(TlsVerificationFailed, match="names neither"):
            _get(srv, TlsConfig(ca_file=good.ca.path, ca_sha384=bytes(48)))
        with pytest.raises(TlsVerificationFailed):
            _get(srv, TlsConfig())  # the system trust store does not know the test CA
        assert srv.hits == 0  # type: ignore[attr-defined]


def test_pinned_ca_copied_into_a_forged_chain_is_refused(good: Tls, tmp_path: Path) -> None:
    """An attacker can present the pinned CA's (public) certificate next to its own leaf: the leaf
    must still verify to the pinned key."""
    evil = TestCA(tmp_path / "evil", name="keybroker test CA")
    leaf = evil.issue("server", "localhost", server=True)
    forged = tmp_path / "forged.pem"
    forged.write_bytes(leaf.cert.read_bytes() + good.ca.path.read_bytes())
    with https_server(forged, leaf.key) as srv:
        with pytest.raises(TlsVerificationFailed):
            _get(srv, TlsConfig(ca_sha384=_fp(_der(good.ca.path))))
        assert srv.hits == 0  # type: ignore[attr-defined]


def test_pin_parsing() -> None:
    fp = hashlib.sha384(b"x").hexdigest()
    colons = ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()
    assert parse_sha384_pin(colons) == bytes.fromhex(fp) == parse_sha384_pin("sha384=" + fp)
    with pytest.raises(InvalidInput, match="96 hex digits"):
        parse_sha384_pin("ab" * 32)
    with pytest.raises(InvalidInput, match="not hex"):
        parse_sha384_pin("xyz")


def test_plain_http_is_refused() -> None:
    with pytest.raises(InvalidInput, match="https://"):
        Transport("http://127.0.0.1:9443")


# --- retries -------------------------------------------------------------------------------------------


class Script:
    """A mock broker answering from a list (status codes or exceptions), counting calls."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if answer >= 400:
            return httpx.Response(
                answer,
                json={"title": "Denied by policy", "detail": "no", "reasons": ["mrtd differs"], "check": "x"},
            )
        return httpx.Response(answer, json={"ok": True})


def _transport(script: Script, sleeps: list[float], attempts: int = 4, token: str | None = None) -> Transport:
    return Transport(
        "https://kb.test",
        token=token,
        retry=RetryPolicy(attempts=attempts, base_delay=0.25, max_delay=1.0),
        sleep=sleeps.append,
        http_transport=httpx.MockTransport(script),
    )


def test_5xx_and_network_errors_are_retried_with_backoff() -> None:
    sleeps: list[float] = []
    script = Script(503, httpx.ConnectError("refused"), 502, 200)
    assert _transport(script, sleeps).request("GET", "/x").status_code == 200
    assert len(script.requests) == 4
    assert (
        len(sleeps) == 3
        and 0.125 <= sleeps[0] <= 0.25
        and 0.25 <= sleeps[1] <= 0.5
        and 0.5 <= sleeps[2] <= 1.0
    )


def test_gives_up_as_unreachable() -> None:
    sleeps: list[float] = []
    script = Script(503)
    with pytest.raises(Unreachable, match="503 no .after 3 attempts"):
        _transport(script, sleeps, attempts=3).request("GET", "/x")
    assert len(script.requests) == 3 and len(sleeps) == 2
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(Unreachable, match="ReadTimeout"):
        _transport(script, sleeps, attempts=2).request("GET", "/x")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_4xx_is_never_retried(status: int) -> None:
    sleeps: list[float] = []
    script = Script(status)
    with pytest.raises(Denied) as caught:
        _transport(script, sleeps).request("POST", "/x", json_body={})
    assert len(script.requests) == 1 and sleeps == []
    assert caught.value.status == status and caught.value.reasons == ["mrtd differs"]
    assert "mrtd differs" in caught.value.diagnostics()


def test_retry_false_means_one_attempt_and_token_only_when_asked() -> None:
    sleeps: list[float] = []
    script = Script(503)
    with pytest.raises(Unreachable):
        _transport(script, sleeps, token="T").request("POST", "/x", retry=False)
    assert len(script.requests) == 1 and script.requests[0].headers["Authorization"] == "Bearer T"
    script = Script(200)
    _transport(script, sleeps, token="T").request("GET", "/x", auth=False)
    assert "Authorization" not in script.requests[0].headers
