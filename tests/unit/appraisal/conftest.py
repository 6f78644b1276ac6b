"""A dev PKI shared by this directory's tests (issued at a pinned time)."""

from __future__ import annotations

import pytest
from tests.helpers.sim_evidence import SimEvidence, SimSnpEvidence


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimEvidence:
    return SimEvidence(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="session")
def sim_snp(tmp_path_factory: pytest.TempPathFactory) -> SimSnpEvidence:
    return SimSnpEvidence(tmp_path_factory.mktemp("snp-appraisal"))
