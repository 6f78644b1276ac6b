"""Shared fixtures: a real PostgreSQL server for the session, and the API under test on either
database (the same suite runs against SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.helpers import postgres

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    if server is None:
        pytest.skip("PostgreSQL binaries not installed (make test installs them when run as root)")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keybroker.db'}"
    server: postgres.PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database("kb_" + uuid.uuid4().hex[:12])


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    settings = Settings(data_dir=tmp_path / "data", database=database_url, dev=True)
    svc = Services.build(settings)
    yield svc
    svc.db.dispose()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="https://testserver") as c:
        yield c


@pytest.fixture
def admin_headers(services: Services) -> dict[str, str]:
    return {"Authorization": "Bearer " + services.tokens.mint("test-admin", ["*:*"])}


_INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under ``tests/integration/`` run real servers (``make unit`` leaves them out)."""
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a server the tests started outlived its fixture (and stop it)."""
    from tests.helpers import procs

    left = procs.leftovers()
    if left:
        procs.kill_leftovers()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"servers started by the tests were still running at the end: {left} (killed)", red=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
