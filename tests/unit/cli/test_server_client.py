"""The operator commands' connection to the server: what each failure is called (over real sockets)
and the server record they read."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keybroker.cli import serving
from keybroker.cli.common import (
    EXIT_TLS,
    EXIT_UNREACHABLE,
    ServerClient,
    ServerTarget,
    ServerUnreachable,
    TlsVerificationFailed,
)
from keybroker.errors import InvalidInput


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _target(url: str, ca_file: Path | None = None) -> ServerTarget:
    return ServerTarget(url=url, ca_file=ca_file, origin="from --server")


def test_refused_names_the_url_and_the_remedy(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target(f"https://127.0.0.1:{port}")).call("GET", "/sys/v1/seal-status")
    assert caught.value.exit_code == EXIT_UNREACHABLE == 3
    assert caught.value.diagnostics() == (
        f"cannot reach https://127.0.0.1:{port} (from --server): connection refused, nothing listens "
        "there. Is keybroker serve running? Give --server URL, or the --data-dir of the running server"
    )


def test_a_silent_server_is_a_timeout(listener: socket.socket) -> None:
    port = listener.getsockname()[1]  # accepts (the kernel does), never answers
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target(f"https://127.0.0.1:{port}"), timeout=0.5).call("GET", "/")
    assert f"cannot reach https://127.0.0.1:{port} (from --server): no connection within 0.5 s" in str(
        caught.value
    )
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target(f"http://127.0.0.1:{port}"), timeout=0.5).call("GET", "/")
    assert f"cannot reach http://127.0.0.1:{port} (from --server): no answer within 0.5 s" in str(
        caught.value
    )


def test_not_tls_and_not_http_are_said(listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    def answer_nonsense() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(b"hello, this is not HTTP\r\n\r\n")
            conn.close()

    threading.Thread(target=answer_nonsense, daemon=True).start()
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target(f"https://127.0.0.1:{port}")).call("GET", "/")
    assert "the TLS handshake failed (WRONG_VERSION_NUMBER)" in str(caught.value)
    assert "--insecure-http speaks plain http://" in str(caught.value)
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target(f"http://127.0.0.1:{port}")).call("GET", "/")
    assert "it does not answer HTTP" in str(caught.value)


def test_a_name_that_does_not_resolve() -> None:
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(_target("https://kbs.invalid:9443")).call("GET", "/")
    assert "cannot reach https://kbs.invalid:9443 (from --server): the host name does not resolve" in str(
        caught.value
    )


def test_tls_failures_exit_4_and_a_bad_ca_file_is_usage(tmp_path: Path) -> None:
    assert TlsVerificationFailed.exit_code == EXIT_TLS == 4
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InvalidInput) as caught:
        ServerClient(_target("https://127.0.0.1:1", bad))
    assert f"the TLS anchor {bad} cannot be read as a PEM CA certificate" in str(caught.value)


# --- the record ------------------------------------------------------------------------------------


def test_client_urls_for_wildcards_and_ipv6() -> None:
    assert serving.client_url("https", "0.0.0.0", 8443) == "https://127.0.0.1:8443"  # noqa: S104
    assert serving.client_url("https", "::", 8443) == "https://[::1]:8443"
    assert serving.client_url("https", "fd00::5", 8443) == "https://[fd00::5]:8443"
    assert serving.client_url("http", "127.0.0.1", 80) == "http://127.0.0.1:80"
    assert serving.client_url("https", "kbs.example", 443) == "https://kbs.example:443"


def test_the_record_is_private_and_marked_stopped_only_by_its_writer(tmp_path: Path) -> None:
    mine = serving.new_record("https://127.0.0.1:8443", "0.0.0.0:8443", "ca/ca.pem")
    serving.write_record(tmp_path, mine)
    assert (tmp_path / "server.json").stat().st_mode & 0o777 == 0o600
    assert serving.read_record(tmp_path) == mine
    # another server recorded itself since: its record stays as it is
    theirs = serving.ServerRecord(**{**mine.__dict__, "pid": mine.pid + 1})
    serving.write_record(tmp_path, theirs)
    serving.mark_stopped(tmp_path, mine)
    assert serving.read_record(tmp_path) == theirs
    serving.mark_stopped(tmp_path, theirs)
    stopped = serving.read_record(tmp_path)
    assert stopped is not None and stopped.stopped_at is not None and stopped.pid == theirs.pid
    assert [p.name for p in tmp_path.iterdir()] == ["server.json"]  # no temporary file left


def test_a_record_that_is_not_one(tmp_path: Path) -> None:
    assert serving.read_record(tmp_path) is None
    for text in ('{"url": "ftp://x"}', "[]", "{", '{"url": "https://127.0.0.1:1"}'):
        (tmp_path / "server.json").write_text(text)
        with pytest.raises(InvalidInput):
            serving.read_record(tmp_path)
    # members a newer keybroker may add are ignored
    doc = {**serving.new_record("https://127.0.0.1:1", "127.0.0.1:1", None).__dict__, "later": 1}
    (tmp_path / "server.json").write_text(json.dumps(doc))
    found = serving.read_record(tmp_path)
    assert found is not None and found.url == "https://127.0.0.1:1"


def test_which_server_and_which_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "ca").mkdir(parents=True)
    (data / "ca" / "ca.pem").write_text("anchor")
    target = serving.find_server(None, data, None)
    assert target.url == serving.DEFAULT_URL == "https://127.0.0.1:9443"
    assert (
        target.origin == f"the default: no server.json in {data}" and target.ca_file == data / "ca" / "ca.pem"
    )
    serving.write_record(data, serving.new_record("https://127.0.0.1:8443", "0.0.0.0:8443", "ca/ca.pem"))
    target = serving.find_server(None, data, None)
    assert (target.url, target.origin, target.note) == (
        "https://127.0.0.1:8443",
        f"recorded in {data}/server.json",
        "",
    )
    target = serving.find_server("https://kbs.example:9443/", data, None, server_from_env=True)
    assert (target.url, target.origin) == ("https://kbs.example:9443", "from KEYBROKER_ADDR")
    other = tmp_path / "other.pem"
    other.write_text("x")
    assert serving.find_server("https://kbs.example:9443", data, other).ca_file == other
    assert serving.find_server("http://127.0.0.1:8080", data, None).ca_file is None
    with pytest.raises(InvalidInput, match="plain http:// only to a loopback address"):
        serving.find_server("http://10.0.0.1:8080", data, None)


@pytest.mark.parametrize(
    "url", ["kbs.example:9443", "https://", "http://[::1", "https://kbs.example:99999", "ftp://kbs.example"]
)
def test_malformed_server_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(InvalidInput, match="expected an https:// URL"):
        serving.find_server(url, None, None)
