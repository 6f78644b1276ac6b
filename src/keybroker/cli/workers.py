"""``keybroker serve --workers N``: N processes accepting on the sockets ``serve`` bound, under
uvicorn's supervisor (which restarts a worker that dies).

Each worker is a replica in its own right, with the guarantees replicas have (docs/ha.md): its own
connection pool, its own barrier, its own view of the audit chain, all through the one database.
So the database must be PostgreSQL (SQLite has one writer, and a file per host), and each worker
must unseal itself: an auto-unseal seal or ``--dev`` (unseal shares given to the shared listener
would land in whichever worker accepted them). ``serve`` checks both before it starts anything,
builds the services once itself (migrations, the ``--dev`` key store, the HTTPS certificate), then
hands the sockets to the workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from keybroker.config import Settings
from keybroker.errors import InvalidInput
from keybroker.seal.config import ShamirSeal


def check(settings: Settings) -> None:
    """Refuse ``--workers`` > 1 where the workers could not keep their guarantees (exit 2)."""
    n = settings.workers
    if n <= 1:
        return
    if settings.database_url.startswith("sqlite"):
        raise InvalidInput(
            f"--workers {n} needs PostgreSQL (--database postgresql+psycopg://...): SQLite serves one "
            "process; run one worker, or use PostgreSQL (docs/ha.md)",
            field="workers",
        )
    if not settings.dev and isinstance(settings.seal.root, ShamirSeal):
        raise InvalidInput(
            f"--workers {n} needs each worker to unseal itself, with an auto-unseal seal ([seal] pkcs11 or "
            "transit) or --dev: unseal shares sent to the shared listener would land in whichever worker "
            "accepted them; with unseal shares, run one worker per replica (docs/ha.md)",
            field="workers",
        )


@dataclass(frozen=True)
class WorkerApp:
    """The app factory each worker runs (pickled into it by uvicorn's supervisor, not passed through
    the environment: the settings may hold credentials)."""

    #: Pickled with the app into each worker (a JSON dump would mask its secrets).
    settings: Settings
    #: The names of the HTTPS certificate (None: plain HTTP).
    tls_names: tuple[str, ...] | None

    def __call__(self) -> Any:
        from keybroker import datadir, logs
        from keybroker.api.app import create_app
        from keybroker.api.services import Services
        from keybroker.cli.serving import TlsIdentity
        from keybroker.replica import Served

        settings = self.settings
        datadir.restrict_umask()
        logs.configure(settings.log_format, settings.log_level)
        logging.getLogger("uvicorn.access").propagate = False  # no access log, as with one process
        services = Services.build(settings)
        identity = TlsIdentity.latest
        if self.tls_names is not None and identity is not None:
            services.replica.serve_tls(list(self.tls_names))

            def switch(new: Served) -> None:
                identity.switch(new.cert, new.key)

            services.replica.on_certificate(switch)
        return create_app(services)
