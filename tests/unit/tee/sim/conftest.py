"""Fixtures for the TEE simulator tests: one shared dev PKI issued at a pinned time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keybroker.tee.sim import DevPki

_ISSUED = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def issued() -> dt.datetime:
    """When the test dev PKIs are issued."""
    return _ISSUED


@pytest.fixture(scope="session")
def at(issued: dt.datetime) -> dt.datetime:
    """When the tests verify: an hour after issue, well inside every validity window."""
    return issued + dt.timedelta(hours=1)


@pytest.fixture(scope="session")
def at_secs(at: dt.datetime) -> int:
    return int(at.timestamp())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, issued: dt.datetime) -> DevPki:
    """A shared dev PKI. Never revoke in it: tests that revoke use ``fresh_pki``."""
    return DevPki.create(tmp_path_factory.mktemp("devpki") / "pki", now=issued)


@pytest.fixture
def fresh_pki(tmp_path: Path, issued: dt.datetime) -> DevPki:
    return DevPki.create(tmp_path / "pki", now=issued)
