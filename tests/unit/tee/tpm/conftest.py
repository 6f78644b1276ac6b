"""One real swtpm for the TPM tests that need it (skipped, saying why, when it is not installed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers.swtpm import MISSING, SKIP_REASON, Swtpm


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    if MISSING:
        pytest.skip(SKIP_REASON)
    with Swtpm(tmp_path_factory.mktemp("tpm")) as tpm:
        yield tpm
