"""Resource paths: each part is 1-128 of [A-Za-z0-9_.-], matched in full (a trailing newline is not
allowed through by ``$``), and never ``.`` or ``..``."""

from __future__ import annotations

import pytest

from keybroker.errors import InvalidInput
from keybroker.resources.service import resource_path


def test_a_valid_path() -> None:
    assert resource_path("repo", "key", "tag-1.0_x") == "repo/key/tag-1.0_x"


@pytest.mark.parametrize("part", ["tag\n", "\ntag", "a/b", "", "x" * 129, ".", "..", "t g", "tag\x00"])
def test_bad_parts_are_refused(part: str) -> None:
    with pytest.raises(InvalidInput, match="must be 1-128 of"):
        resource_path("repo", "key", part)
