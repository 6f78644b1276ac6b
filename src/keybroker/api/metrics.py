"""The service's state as Prometheus gauges: seal, unseal progress, database, key store.

Read at scrape time. Nothing here waits on a database known to be down: the database gauge is the
outcome of the last call this process made (the audit checkpointer makes one every interval), and
the seal configuration is read only while the database answers. The key store's health is checked
at most every :data:`KEYSTORE_CHECK_SECONDS`, so scrapes do not load a remote backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from keybroker.api.services import Services
from keybroker.errors import KeybrokerError

#: The key store's health is checked at most this often (seconds).
KEYSTORE_CHECK_SECONDS = 5.0


class StateCollector(Collector):
    def __init__(self, services: Services) -> None:
        self._svc = services
        self._lock = threading.Lock()
        self._keystore: tuple[float, bool] | None = None

    def _keystore_up(self) -> bool:
        now = time.monotonic()
        with self._lock:
            cached = self._keystore
            if cached is not None and now - cached[0] < KEYSTORE_CHECK_SECONDS:
                return cached[1]
            try:
                self._svc.keystore.health()
                up = True
            except (KeybrokerError, SQLAlchemyError):
                up = False
            self._keystore = (now, up)
            return up

    def collect(self) -> Iterator[Metric]:
        svc = self._svc
        db = svc.db.availability
        yield GaugeMetricFamily(
            "keybroker_database_up",
            "1 while the database answered this replica's last call; 0 during an outage (503s)",
            value=1.0 if db.up else 0.0,
        )
        yield CounterMetricFamily(
            "keybroker_database_outages",
            "Database outages this replica has seen (each logged once when it starts and when it ends)",
            value=float(db.outages),
        )
        yield GaugeMetricFamily(
            "keybroker_sealed",
            "1 while this replica is sealed (or the key store is not initialized): no key operations",
            value=1.0 if svc.barrier.sealed else 0.0,
        )
        if db.up:
            try:
                st = svc.barrier.status()
            except SQLAlchemyError as exc:
                svc.db.availability.failed(exc)
            else:
                yield GaugeMetricFamily(
                    "keybroker_initialized",
                    "1 once the key store is initialized",
                    value=float(st.initialized),
                )
                yield GaugeMetricFamily(
                    "keybroker_unseal_progress",
                    "Unseal shares given so far in this replica's current unseal attempt",
                    value=float(st.progress),
                )
                yield GaugeMetricFamily(
                    "keybroker_unseal_threshold",
                    "Unseal shares needed to unseal (0 before init)",
                    value=float(st.threshold),
                )
        up = GaugeMetricFamily(
            "keybroker_keystore_up",
            "1 while the key store backend can serve keys (the built-in one: while unsealed)",
            labels=["backend"],
        )
        up.add_metric([svc.settings.keystore.type], 1.0 if self._keystore_up() else 0.0)
        yield up


def register(registry: CollectorRegistry, services: Services) -> None:
    """Add the state gauges to the app's registry (``api.app.create_app``)."""
    registry.register(StateCollector(services))
