"""``serve --dev`` is single-node, and says so in one line (PostgreSQL, real processes).

``--dev`` keeps the unseal key in the data dir that initialized the key store. A second ``--dev``
replica on the same database (its own data dir) cannot open it. Before (issue 15): it died with a
``FileNotFoundError`` traceback; and two ``--dev`` servers started at the same moment on a new
database raced to initialize it, the loser ending in ``database error: duplicate key value violates
unique constraint "seal_config_pkey"`` (exit 1) and leaving an unseal key file that opens nothing.
Now: exit 2 and one line saying that ``--dev`` is single-node and what to do.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import postgres, procs
from tests.helpers.postgres import free_port
from tests.helpers.server import BIN, Server, keybroker


@pytest.fixture
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    if server is None:
        pytest.skip("PostgreSQL binaries not installed")
    yield server
    server.stop()


def _single_node_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "--dev is single-node" in errors[0] and "docs/ha.md" in errors[0], errors[0]
    assert "listening on" not in stderr
    return errors[0]


def test_a_second_dev_replica_is_refused_in_one_line(pg: postgres.PostgresServer, tmp_path: Path) -> None:
    url = pg.create_database("kb_dev_second")
    first = Server(tmp_path / "first", extra=["--dev", "--database", url]).start()
    try:
        second = tmp_path / "second"
        r = keybroker(
            "serve",
            "--dev",
            "--database",
            url,
            "--data-dir",
            str(second),
            "--listen",
            f"127.0.0.1:{free_port()}",
        )
        assert r.returncode == 2, r.stderr
        line = _single_node_line(r.stderr)
        assert "initialized by --dev with another data dir" in line
        assert not (second / "dev-unseal.key").exists()
        with first.client() as c:  # the first one is untouched
            assert c.get("/readyz").status_code == 200
    finally:
        first.stop()


def test_two_dev_servers_started_together_one_runs(pg: postgres.PostgresServer, tmp_path: Path) -> None:
    for round_ in range(2):
        url = pg.create_database(f"kb_dev_together_{round_}")
        started = []
        for i in range(2):
            data = tmp_path / f"r{round_}" / f"dev{i}"
            data.parent.mkdir(parents=True, exist_ok=True)
            argv = [str(BIN / "keybroker"), "serve", "--dev", "--database", url, "--data-dir", str(data)]
            proc = procs.spawn(
                [*argv, "--listen", f"127.0.0.1:{free_port()}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.append((data, proc))
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and all(p.poll() is None for _, p in started):
                if all((d / "server.json").exists() for d, _ in started):
                    break
                time.sleep(0.2)
            exited = [(d, p) for d, p in started if p.poll() is not None]
            assert len(exited) == 1, [p.poll() for _, p in started]
            data, proc = exited[0]
            assert proc.stderr is not None
            assert proc.returncode == 2
            _single_node_line(proc.stderr.read())
            assert not (data / "dev-unseal.key").exists()  # no key file that opens nothing
            winner = next(d for d, p in started if p.poll() is None)
            assert (winner / "dev-unseal.key").is_file()
        finally:
            for _, p in started:
                procs.stop(p)
