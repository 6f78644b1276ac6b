"""How the operator commands find a real ``keybroker serve`` (issue 12): the data dir's record of
where it listens, KEYBROKER_ADDR and --server over it, and errors that say which URL was tried and
what to do, with distinct exit codes (3 unreachable, 4 TLS verification failed)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.postgres import free_port
from tests.helpers.server import Server, keybroker


@pytest.fixture
def everywhere(tmp_path: Path) -> Iterator[Server]:
    """A server listening on every IPv4 address, on a random port."""
    srv = Server(tmp_path / "data", host="0.0.0.0").start()  # noqa: S104
    yield srv
    srv.stop()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_the_data_dir_is_enough_on_any_port(everywhere: Server) -> None:
    data = everywhere.data_dir
    record_path = data / "server.json"
    record = json.loads(record_path.read_text())
    # a client on this host dials loopback (the certificate names 127.0.0.1) and pins the TLS anchor
    assert record["url"] == f"https://127.0.0.1:{everywhere.port}"
    assert record["listen"] == f"0.0.0.0:{everywhere.port}"
    assert record["tls_anchor"] == "ca/ca.pem" and record["stopped_at"] is None
    assert stat.S_IMODE(record_path.stat().st_mode) == 0o600
    assert f"operator commands reach it at {everywhere.url}" in everywhere.log()

    r = keybroker("operator", "status", "--data-dir", str(data))
    assert r.returncode == 1 and "initialized  False" in r.stdout, r.stderr
    r = keybroker(
        "operator",
        "init",
        "--shares",
        "1",
        "--threshold",
        "1",
        "--json",
        env={"KEYBROKER_DATA_DIR": str(data)},
    )
    assert r.returncode == 0, r.stderr
    share = json.loads(r.stdout)["unseal_shares"][0]
    r = keybroker("operator", "unseal", "--data-dir", str(data), input=share + "\n")
    assert r.returncode == 0 and r.stdout.strip() == "unsealed", r.stderr
    assert keybroker("operator", "status", "--data-dir", str(data)).returncode == 0


def test_server_and_keybroker_addr_come_before_the_record(everywhere: Server) -> None:
    data = str(everywhere.data_dir)
    dead = f"https://127.0.0.1:{free_port()}"
    # KEYBROKER_ADDR over the record: the error names the URL and where it came from
    r = keybroker("operator", "status", "--data-dir", data, env={"KEYBROKER_ADDR": dead})
    assert r.returncode == 3
    line = _one_line(r.stderr)
    assert f"cannot reach {dead} (from KEYBROKER_ADDR): connection refused" in line
    assert "Is keybroker serve running?" in line
    # --server over KEYBROKER_ADDR
    r = keybroker(
        "operator", "status", "--data-dir", data, "--server", everywhere.url, env={"KEYBROKER_ADDR": dead}
    )
    assert r.returncode == 1 and "initialized  False" in r.stdout, r.stderr
    r = keybroker(
        "operator", "status", "--data-dir", data, "--server", dead, env={"KEYBROKER_ADDR": everywhere.url}
    )
    assert r.returncode == 3 and f"cannot reach {dead} (from --server)" in r.stderr


def test_an_ipv6_wildcard_is_reached_on_ipv6_loopback(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", host="::").start()
    try:
        record = json.loads((server.data_dir / "server.json").read_text())
        assert record["url"] == f"https://[::1]:{server.port}"
        r = keybroker("operator", "status", "--data-dir", str(server.data_dir))
        assert r.returncode == 1 and "initialized  False" in r.stdout, r.stderr
    finally:
        server.stop()


def test_a_certificate_problem_is_not_unreachable(everywhere: Server, tmp_path: Path) -> None:
    other = Server(tmp_path / "other").start()  # another broker: another TLS anchor
    other.stop()
    data = str(everywhere.data_dir)
    # the wrong CA: exit 4, naming the URL, the CA it trusted and what to give
    r = keybroker("operator", "status", "--data-dir", data, "--ca-file", str(other.ca))
    assert r.returncode == 4
    line = _one_line(r.stderr)
    assert line.startswith(
        f"error: TLS verification failed for {everywhere.url} (recorded in {data}/server.json): "
    )
    assert f"trusting {other.ca}" in line and "--ca-file" in line and "--data-dir" in line
    assert "cannot reach" not in line
    # --server with the data dir of another server: its anchor does not verify this one
    r = keybroker("operator", "status", "--data-dir", str(other.data_dir), "--server", everywhere.url)
    assert r.returncode == 4 and f"TLS verification failed for {everywhere.url} (from --server)" in r.stderr
    # plain http:// to the HTTPS server: unreachable, and told why
    http = everywhere.url.replace("https://", "http://")
    r = keybroker("operator", "status", "--server", http)
    assert r.returncode == 3
    assert f"cannot reach {http} (from --server): it does not answer HTTP" in _one_line(r.stderr)
    assert "use https://" in r.stderr
    # and the right CA given explicitly works from any directory
    r = keybroker(
        "operator",
        "status",
        "--server",
        everywhere.url,
        "--ca-file",
        str(everywhere.ca),
        "--data-dir",
        str(tmp_path / "nowhere"),
    )
    assert r.returncode == 1 and "initialized  False" in r.stdout, r.stderr


def test_bad_server_urls_are_usage_errors(tmp_path: Path) -> None:
    r = keybroker("operator", "status", "--server", "kbs.example:9443")
    assert r.returncode == 2 and "expected an https:// URL" in _one_line(r.stderr)
    # an admin token is never sent in clear over a network
    r = keybroker("operator", "seal", "--token", "t", "--server", "http://kbs.example:9443")
    assert r.returncode == 2 and "plain http:// only to a loopback address" in _one_line(r.stderr)
    r = keybroker(
        "operator", "status", "--server", "https://127.0.0.1:1", "--ca-file", str(tmp_path / "none.pem")
    )
    assert r.returncode == 2 and "--ca-file" in _one_line(r.stderr)
    # a record that is not one: said so, exit 2
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "server.json").write_text('{"url": 5}')
    r = keybroker("operator", "status", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 2 and "is not a keybroker server record" in _one_line(r.stderr)


def test_a_stopped_or_crashed_server_is_named(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    data = server.data_dir
    server.stop()  # SIGTERM: a clean shutdown
    record = json.loads((data / "server.json").read_text())
    assert record["stopped_at"] is not None
    r = keybroker("operator", "unseal", "--data-dir", str(data), input="x\n")
    assert r.returncode == 3
    line = _one_line(r.stderr)
    assert f"cannot reach {server.url} (recorded in {data}/server.json): connection refused" in line
    assert f"the keybroker serve that recorded it stopped at {record['stopped_at']}" in line
    # a record left by a process that is gone (killed): said so too
    record["stopped_at"] = None
    record["pid"] = _a_dead_pid()
    (data / "server.json").write_text(json.dumps(record))
    r = keybroker("operator", "status", "--data-dir", str(data))
    assert r.returncode == 3 and f"(pid {record['pid']}) is no longer running" in r.stderr


def _a_dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
