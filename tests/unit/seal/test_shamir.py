from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import InvalidInput
from keybroker.seal import shamir


def test_any_threshold_subset_recovers() -> None:
    secret = os.urandom(32)
    parts = shamir.split(secret, 5, 3)
    assert len(parts) == 5 and all(len(p) == 33 for p in parts)
    for subset in itertools.combinations(parts, 3):
        assert shamir.combine(list(subset)) == secret
    assert shamir.combine(parts) == secret


def test_fewer_than_threshold_does_not_recover() -> None:
    secret = os.urandom(32)
    parts = shamir.split(secret, 5, 3)
    assert shamir.combine(parts[:2]) != secret


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), n=st.integers(2, 10), data=st.data())
def test_round_trip_property(secret: bytes, n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(2, n))
    parts = shamir.split(secret, n, k)
    chosen = data.draw(st.permutations(parts))[:k]
    assert shamir.combine(chosen) == secret


@pytest.mark.parametrize(("n", "k"), [(3, 4), (0, 0), (256, 3), (3, 1)])
def test_bad_parameters(n: int, k: int) -> None:
    with pytest.raises(InvalidInput):
        shamir.split(b"secret", n, k)


def test_bad_shares() -> None:
    parts = shamir.split(b"secret-bytes", 3, 2)
    with pytest.raises(InvalidInput, match="repeat"):
        shamir.combine([parts[0], parts[0]])
    with pytest.raises(InvalidInput, match="length"):
        shamir.combine([parts[0], parts[1][:-2]])
