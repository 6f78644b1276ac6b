"""A dev service's first start, done once per test session and per database, copied for each test.

A first start (``Services.build`` on an empty data dir and database: the Alembic migrations, the dev
PKI, the two CAs, the token signing key, the dev seal) costs 0.2 to 0.4 s of CPU, and some 450
tests start one on each database. :meth:`Template.build` does it once; :meth:`Template.restore`
copies its data dir (``shutil.copytree``, modes kept) and its database (the SQLite file;
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL) to where a test's settings point, and the test's own
``Services.build`` then opens them as a restarted service does: new ``Services``, so nothing of
a process (the token registry's cache, the audit chain guard's anchor, the checkpointer) is shared.

What is copied is what a first start leaves, and no more: no audit record (the head at 0), no
checkpoint file, the token signing key on record and in the data dir, the dev seal initialized with
the data dir's unseal key. The data dir and the database always come from the same start, so they
agree (the template is never served: no checkpoint names a chain the copied database lacks).

Tests of the first start itself (creating the data dir, migrating, upgrading an old layout) build
their services from nothing and do not use this.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url
from tests.helpers.postgres import PostgresServer

from keybroker.api.services import Services
from keybroker.config import Settings
from keybroker.keystores.config import KeystoreSettings
from keybroker.seal.config import SealSettings

#: SQLite writes these beside the database file while a connection is open.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Template:
    """A data dir and a database left by one first start of a dev service, never served."""

    data_dir: Path
    database_url: str
    #: The PostgreSQL server of ``database_url``; None: SQLite.
    server: PostgresServer | None = None

    @classmethod
    def build(cls, data_dir: Path, database_url: str, server: PostgresServer | None = None) -> Template:
        """First-start a dev service on ``data_dir`` and ``database_url`` (empty), then close it."""
        svc = Services.build(Settings(data_dir=data_dir, database=database_url, dev=True))
        svc.db.dispose()
        if server is None:
            db_file = _sqlite_file(database_url)
            left = [db_file.name + s for s in _SQLITE_SIDE_FILES if Path(f"{db_file}{s}").exists()]
            if left:  # the last connection closed folds the WAL into the file: it alone is the database
                raise RuntimeError(f"SQLite left {left} beside the template database")
        else:
            # nothing may change it, and CREATE DATABASE ... TEMPLATE needs it without connections
            server.admin(f'ALTER DATABASE "{make_url(database_url).database}" ALLOW_CONNECTIONS false')
        return cls(data_dir, database_url, server)

    @staticmethod
    def fits(settings: Settings) -> bool:
        """Whether a first start with ``settings`` leaves what the template holds: a dev service with
        the built-in key store and the default seal (other settings are read at each start)."""
        return settings.dev and settings.keystore == KeystoreSettings() and settings.seal == SealSettings()

    def restore(self, settings: Settings) -> Settings:
        """Copy the template to ``settings``' data dir (which must not exist) and database (on SQLite
        a file that must not exist; on PostgreSQL a database of the template's server, created here,
        replacing an empty one of that name); returns ``settings``."""
        if not self.fits(settings):
            raise ValueError("the template is a dev service with the built-in key store and default seal")
        url = settings.database_url
        if self.server is None:
            if not url.startswith("sqlite"):
                raise ValueError(f"an SQLite template cannot restore to {url}")
            target = _sqlite_file(url)
            if target.exists():
                raise FileExistsError(f"{target}: the restored database must be a new file")
            shutil.copy2(_sqlite_file(self.database_url), target)
        else:
            template, dest = make_url(self.database_url), make_url(url)
            if (dest.host, dest.port) != (template.host, template.port) or not dest.database:
                raise ValueError(f"{url} is not a database of the template's server")
            self.server.drop_database(dest.database)
            self.server.create_database(dest.database, template=template.database)
        shutil.copytree(self.data_dir, settings.data_dir, symlinks=True)
        return settings


def _sqlite_file(url: str) -> Path:
    path = make_url(url).database
    if not path or path == ":memory:":
        raise ValueError(f"not an SQLite database file: {url}")
    return Path(path)
