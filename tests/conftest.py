"""Shared fixtures: a real PostgreSQL server for the session, and the API under test on either
database (the same suite runs against SQLite and PostgreSQL).

``services`` is a dev service as after its first start, copied from a template started once per
session and database (``tests/helpers/service_template.py``): each test has its own data dir and
database, and its own ``Services``, without paying for the migrations, the dev PKI and the keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url
from tests.helpers import postgres
from tests.helpers.service_template import Template

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
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database: empty, or (for a test that uses ``services``) the one ``services`` restores
    from the template. PostgreSQL databases are dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keybroker.db'}"
        return
    server: postgres.PostgresServer = request.getfixturevalue("pg_server")
    name = "kb_" + uuid.uuid4().hex[:12]
    # `services` creates it from the template (and replaces an empty one if it is asked for later)
    yield server.url(name) if "services" in request.fixturenames else server.create_database(name)
    server.drop_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("template-sqlite")
    return Template.build(base / "data", f"sqlite:///{base / 'keybroker.db'}")


@pytest.fixture(scope="session")
def postgres_template(
    tmp_path_factory: pytest.TempPathFactory, pg_server: postgres.PostgresServer
) -> Template:
    base = tmp_path_factory.mktemp("template-postgresql")
    return Template.build(base / "data", pg_server.create_database("kb_template"), pg_server)


def template_for(request: pytest.FixtureRequest, database_url: str) -> Template:
    """The session's template on the database kind of ``database_url``."""
    kind = "sqlite" if make_url(database_url).get_backend_name() == "sqlite" else "postgres"
    template: Template = request.getfixturevalue(f"{kind}_template")
    return template


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    """A dev service after its first start, on ``tmp_path / "data"`` and ``database_url``."""
    settings = Settings(data_dir=tmp_path / "data", database=database_url, dev=True)
    svc = Services.build(template_for(request, database_url).restore(settings))
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
    """Tests under ``tests/integration/`` run real servers (``make unit`` leaves them out); under
    pytest-xdist (``make suite``, ``-n N --dist loadgroup``) they run one after another on one worker,
    as they were written to, while the other workers share the rest."""
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.xdist_group("integration"))


#: Set by GNU readline in pytest-xdist's workers (80 and 24) though not in the process that started
#: them: a rich Console created at import then keeps 80 columns whatever COLUMNS a test sets later.
_TERMINAL_ENV = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: pass this process's COLUMNS and LINES (or their absence) on."""
    node.workerinput["terminal_env"] = {name: os.environ.get(name) for name in _TERMINAL_ENV}


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker: the controller's COLUMNS and LINES, so tests see what a plain run sees."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    for name, value in workerinput["terminal_env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
