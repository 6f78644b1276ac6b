"""Fixtures for the collateral service: the corpus collateral files, a dev PKI, stores on SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.vectors.corpus import load_cases, path

from keybroker.collateral.importers import read_file
from keybroker.collateral.items import TrustedRoots
from keybroker.collateral.store import CollateralStore
from keybroker.store.db import Database
from keybroker.tee.sim import DevPki

#: Every collateral file the corpus cases use, tampered ones excluded.
CORPUS_FILES = sorted(
    {c["collateral"] for c in load_cases("dcap") if not c["collateral"].startswith("tampered/")}
)
TAMPERED_FILES = sorted(p.name for p in path("tampered").glob("*collateral*"))
SIM_ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def new_store(directory: Path) -> CollateralStore:
    directory.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{directory / 'keybroker.db'}")
    db.migrate()
    return CollateralStore(db)


@pytest.fixture(scope="session")
def intel_roots() -> TrustedRoots:
    return TrustedRoots()


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki.create(tmp_path_factory.mktemp("collateral-devpki") / "pki", now=SIM_ISSUED)


@pytest.fixture(scope="session")
def dev_roots(dev_pki: DevPki) -> TrustedRoots:
    return TrustedRoots([dev_pki.root_cert])


@pytest.fixture(scope="module")
def corpus_store(
    tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki, dev_roots: TrustedRoots
) -> Iterator[CollateralStore]:
    """Every corpus collateral file and the simulator's, imported once (read-only for the tests)."""
    store = new_store(tmp_path_factory.mktemp("corpus-store"))
    batches = [(f"file:{rel}", read_file(path(rel), dev_roots)) for rel in CORPUS_FILES]
    batches += [(f"file:{tee}", read_file(dev_pki.collateral_path(tee), dev_roots)) for tee in ("sgx", "tdx")]
    store.import_sources(batches)
    yield store
    store.db.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CollateralStore]:
    s = new_store(tmp_path / "store")
    yield s
    s.db.dispose()
