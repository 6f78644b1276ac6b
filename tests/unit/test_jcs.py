"""keybroker.jcs writes the bytes rfc8785 writes (the audit chain's hashes depend on it), and refuses
what rfc8785 refuses, with the same errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker import jcs

_INT = 2**53 - 1

# every scalar JSON has, integers past the safe range and floats too (those take the fallback)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
keys = st.text(max_size=12) | st.sampled_from(["a", "A", "é", "\ue000", "\U0001f600", "a\x00", "", "\x7f"])
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


def _same(doc: Any) -> None:
    try:
        want = rfc8785.dumps(doc)
    except (ValueError, TypeError) as exc:  # CanonicalizationError, or a codec's error on a bad key
        with pytest.raises(type(exc)):
            jcs.dumps(doc)
        return
    assert jcs.dumps(doc) == want


@settings(max_examples=600, deadline=None)
@given(documents)
def test_generated_documents_serialize_as_rfc8785_does(doc: Any) -> None:
    _same(doc)


@pytest.mark.parametrize(
    "doc",
    [
        # every escape JSON has, each control character, DEL and the line separators kept as they are
        {"s": "".join(chr(i) for i in range(0x20)) + '"\\/\x7f\u2028\u2029é€\U0001f600'},
        {"b": True, "f": False, "n": None, "i": _INT, "j": -_INT, "e": [], "o": {}},
        # past the safe integers: rfc8785's IntegerDomainError, from both
        {"big": _INT + 1},
        [-_INT - 1],
        # keys sorted by UTF-16 code units: U+E000 before U+1F600 there, after it by code point
        {"\U0001f600": 1, "\ue000": 2, "z": 3, "Z": 4, "": 5},
        # a lone surrogate: refused
        {"s": "\ud800"},
        {"\udfff": 1},
        # floats: ECMAScript's number form (1.0 -> 1, 1e21, 5e-324)
        {"x": 1.0, "y": 1e21, "z": 5e-324, "w": -0.0, "v": 0.1},
        # not JSON at all
        {"k": b"bytes"},
        {1: "integer key"},
        {"set": {1, 2}},
        ("a", ("b", ["c"])),
    ],
)
def test_edge_cases_serialize_as_rfc8785_does(doc: Any) -> None:
    _same(doc)


def test_subclasses_take_rfc8785s_path() -> None:
    """A str or int subclass (an enum member) might serialize differently through json.dumps."""
    import enum

    class Colour(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    _same({"c": Colour.RED, "l": Level.HIGH, "k": {Colour.RED: 1}})


def test_an_audit_record_hashes_as_before() -> None:
    """The chain's record hash over a realistic record is the rfc8785 one (no re-hashing of old chains)."""
    from keybroker.audit.log import record_hash

    fields = {
        "seq": 42,
        "time": "2026-01-02T03:04:05.678901Z",
        "actor": "workload",
        "action": "key.transfer",
        "object_id": "0b0f7c2e-4a34-4a7c-9a1f-1b2c3d4e5f60",
        "outcome": "denied",
        "reason": 'the evidence does not satisfy the key\'s policy: mrtd "ab…" is not listed\n',
        "details": {"protocol": "kbs/v1", "notes": [], "tcb_status": "UpToDate", "n": 1},
    }
    import hashlib

    prev = "0" * 64
    assert record_hash(prev, fields) == hashlib.sha256(prev.encode() + rfc8785.dumps(fields)).hexdigest()
    assert json.loads(jcs.dumps(fields)) == fields
